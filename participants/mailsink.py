"""A local SMTP sink for development: accepts every mail and keeps it on disk.

    python -m participants.mailsink --port 8105 --store ~/.local/share/tcc/mail

Each mail is stored as one file per Message-ID (``<store>/<name>.eml``), so a mail delivered
twice is visible as the same file, not a second one; every delivery, duplicates included, is
one line of ``<store>/received.jsonl`` (``to``, ``subject``, ``message_id``, ``file``,
``deliveries``: how many times that Message-ID has arrived, ``duplicate``). `tcc up` starts
it and prints a line for each mail it receives. Nothing is ever relayed anywhere.

``--reply-delay-s`` holds the answer to each mail's data that long after storing it, so a
test can stop the sender while it waits for the server to accept its mail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import time
from dataclasses import dataclass
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

RECEIVED = "received.jsonl"
_UNSAFE = re.compile(r"[^A-Za-z0-9._@-]+")


def file_name(message_id: str) -> str:
    """The file a Message-ID is stored in: readable, safe on any file system, and unique (a
    digest of the whole id follows what is kept of it)."""
    readable = _UNSAFE.sub("_", message_id.strip().strip("<>"))[:100]
    digest = hashlib.sha256(message_id.strip().encode()).hexdigest()[:16]
    return f"{readable}.{digest}.eml"


@dataclass(frozen=True, slots=True)
class Received:
    message_id: str
    file: str
    to: list[str]
    subject: str
    deliveries: int

    @property
    def duplicate(self) -> bool:
        return self.deliveries > 1


class Store:
    """A folder of mails, one file per Message-ID, and the log of every delivery."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.deliveries: dict[str, int] = {}
        for record in read_received(root):
            message_id = str(record.get("message_id"))
            self.deliveries[message_id] = self.deliveries.get(message_id, 0) + 1

    def put(self, data: bytes, recipients: list[str]) -> Received:
        mail = message_from_bytes(data, policy=default_policy)
        message_id = str(mail.get("Message-ID") or "").strip()
        if not message_id:  # not from our samples; still kept, under its content's digest
            message_id = f"<{hashlib.sha256(data).hexdigest()}@mailsink.invalid>"
        name = file_name(message_id)
        path = self.root / name
        if not path.exists():
            partial = path.with_suffix(".partial")
            partial.write_bytes(data)
            os.replace(partial, path)  # whole or not at all
        count = self.deliveries.get(message_id, 0) + 1
        self.deliveries[message_id] = count
        received = Received(message_id, name, recipients, str(mail.get("Subject", "")), count)
        line = {
            "at": time.time(),
            "message_id": message_id,
            "file": name,
            "to": recipients,
            "subject": received.subject,
            "deliveries": count,
            "duplicate": received.duplicate,
        }
        with open(self.root / RECEIVED, "a", encoding="utf-8") as log:
            log.write(json.dumps(line) + "\n")
        return received


def read_received(root: Path) -> list[dict[str, Any]]:
    """Every delivery the sink logged in ``root``, oldest first (a torn last line skipped)."""
    try:
        text = (root / RECEIVED).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def stored_mails(root: Path) -> list[Path]:
    """The mails kept in ``root``: one file per Message-ID."""
    return sorted(root.glob("*.eml"))


class Sink:
    """aiosmtpd's handler: store the mail, then (after the optional delay) accept it."""

    def __init__(self, store: Store, reply_delay_s: float = 0.0) -> None:
        self.store = store
        self.reply_delay_s = reply_delay_s

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content or b""
        data = content if isinstance(content, bytes) else content.encode()
        recipients = [str(r) for r in envelope.rcpt_tos]
        self.store.put(data, recipients)
        if self.reply_delay_s:
            await asyncio.sleep(self.reply_delay_s)
        return "250 Message accepted for delivery"


async def serve(host: str, port: int, store: Path, reply_delay_s: float = 0.0) -> None:
    """Serve until SIGTERM or SIGINT."""
    sink = Sink(Store(store), reply_delay_s)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(sink, hostname="tcc-mailsink"), host, port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8105)
    parser.add_argument("--store", type=Path, required=True, help="the folder mails go to")
    parser.add_argument("--reply-delay-s", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.store, args.reply_delay_s))


if __name__ == "__main__":
    main()
