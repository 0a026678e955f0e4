"""No API key, in any form, ever reaches a log line: malformed requests of every kind are
sent over raw sockets to a real `tcc serve`, and its whole log is searched for the key."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from coordinator.core.apikeys import hash_key
from coordinator.logs import guard_server_logs, redact
from tests.processes import CoordinatorProcess

pytestmark = pytest.mark.slow

KEY = "sk-live-9f8e7d6c5b4a3928170615"


async def exchange(port: int, raw: bytes, timeout_s: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes or answers (bounded in time)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            return await reader.read(65536)
    finally:
        writer.close()


def request(header_lines: bytes, target: bytes = b"/v1/transactions/x") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header_lines + b"\r\n"


KEY_BYTES = KEY.encode()
MALFORMED = {
    "control character after the key": request(b"Authorization: Bearer " + KEY_BYTES + b"\x01\r\n"),
    "control character in the key": request(
        b"Authorization: Bearer " + KEY_BYTES[:10] + b"\x7f" + KEY_BYTES[10:] + b"\r\n"
    ),
    "over-long header line": request(b"Authorization: Bearer " + KEY_BYTES + b"x" * 9000 + b"\r\n"),
    "too many headers": request(
        b"Authorization: Bearer " + KEY_BYTES + b"\r\n" + b"X-Pad: y\r\n" * 200
    ),
    "broken header name": request(b"Authori\x00zation: Bearer " + KEY_BYTES + b"\r\n"),
    "no colon": request(b"Authorization Bearer " + KEY_BYTES + b"\r\n"),
    "key in a broken request line": b"GET /v1/x?k=" + KEY_BYTES + b" HTTP/1.1 junk\r\n\r\n",
    "wrong key": request(b"Authorization: Bearer " + KEY_BYTES[::-1] + b"\r\n"),
    "right key": request(b"Authorization: Bearer " + KEY_BYTES + b"\r\n"),
}


async def test_malformed_requests__never_put_the_key_in_a_log_line(
    database_url: str, tmp_path: Path
) -> None:
    proc = CoordinatorProcess(
        database_url, tmp_path, insecure="false", api_keys=f"ops:admin:{hash_key(KEY)}"
    )
    await proc.start()
    try:
        answers = {name: await exchange(proc.port, raw) for name, raw in MALFORMED.items()}
    finally:
        proc.stop()
    # Every request was answered (4xx), so each went through the paths that log.
    for name, answer in answers.items():
        status_line = answer.split(b"\r\n", 1)[0]
        version, code = status_line.split(b" ")[:2]
        assert version.startswith(b"HTTP/1."), (name, answer[:80])
        assert code.startswith(b"4"), (name, answer[:80])
    logs = proc.logs()
    assert "malformed request" in logs  # the parser errors were logged, safely
    for fragment in (KEY, KEY[:12], KEY[-12:], KEY[::-1][:12]):
        assert fragment not in logs, f"{fragment!r} leaked into the log"


def test_redact__masks_whatever_follows_authorization_or_bearer() -> None:
    lines = [
        f"Invalid header value char: b'Authorization: Bearer {KEY}\\x01'",
        f'{{"headers": {{"authorization": "Bearer {KEY}"}}}}',
        f"token=bearer {KEY}, next",
        f"Authorization={KEY}",
    ]
    for line in lines:
        assert KEY not in redact(line), line
    assert redact("no secrets here") == "no secrets here"


def test_server_log_guard__drops_the_request_bytes_of_a_parser_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from aiohttp.http_exceptions import InvalidHeader

    guard_server_logs()
    guard_server_logs()  # idempotent
    with caplog.at_level(logging.INFO, logger="aiohttp.server"):
        try:
            raise InvalidHeader(b"Authorization: Bearer " + KEY_BYTES + b"\x01")
        except InvalidHeader:
            logging.getLogger("aiohttp.server").exception(
                "Error handling request from %s", "127.0.0.1"
            )
    [record] = caplog.records
    assert KEY not in caplog.text
    assert record.getMessage() == (
        "malformed request from 127.0.0.1 refused: InvalidHeader (HTTP 400)"
    )
