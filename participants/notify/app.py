"""The notify service: a reliable message's step that sends an e-mail over SMTP.

``POST /notify/action`` takes a message step (``{gid, branch_id, phase, payload}`` with
payload ``{to, subject, body}``) and answers 200 only once the SMTP server accepted the mail,
so a failed send (server down, refused, timed out) answers 503 and the coordinator delivers
the step again later. The barrier runs the send once per (gid, branch_id): a repeated
delivery answers 200 without sending. The mail's Message-ID is made from the gid and the
branch id, the same on every attempt, so in the one window the barrier cannot close (the
server accepted the mail and notify died before its commit) the second copy carries the
same Message-ID and a receiver that keys on it (tcc up's sink does) keeps one mail.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiosmtplib
import structlog
from aiohttp import web

from participants.barrier import Connection
from participants.http import Refused, RetryLater, TccCall, message_route
from participants.service import POOL, database

log = structlog.get_logger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
MAIL_DOMAIN = "tcc-notify.invalid"
_ADDRESS = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+$")
_SLUG = re.compile(r"[^A-Za-z0-9-]+")


@dataclass(frozen=True)
class Smtp:
    host: str = "127.0.0.1"
    port: int = 8105
    sender: str = "shop@example.test"
    timeout_s: float = 10.0


SMTP = web.AppKey("smtp", Smtp)
COORDINATOR = web.AppKey("coordinator", str)


def message_id(gid: str, branch_id: str) -> str:
    """The mail's Message-ID, the same for every delivery of one step: readable parts of the
    gid and branch id, and a digest of both that keeps it unique."""
    digest = hashlib.sha256(f"{gid}\x00{branch_id}".encode()).hexdigest()[:24]
    readable = ".".join(
        part
        for part in (_SLUG.sub("-", gid)[:60].strip("-"), _SLUG.sub("-", branch_id)[:30])
        if part
    )
    return f"<{readable}.{digest}@{MAIL_DOMAIN}>"


def _mail_of(payload: Any) -> tuple[str, str, str]:
    if not isinstance(payload, dict):
        raise Refused("payload must be an object with to, subject and body")
    to, subject, body = payload.get("to"), payload.get("subject"), payload.get("body")
    if not isinstance(to, str) or not _ADDRESS.match(to):
        raise Refused(f"to must be one e-mail address, not {to!r}")
    if not isinstance(subject, str) or not subject or "\n" in subject or len(subject) > 200:
        raise Refused("subject must be one line of at most 200 characters")
    if not isinstance(body, str):
        raise Refused("body must be a string")
    return to, subject, body


def make_send_mail(smtp: Smtp) -> Any:
    async def send_mail(conn: Connection, call: TccCall) -> dict[str, Any]:
        to, subject, body = _mail_of(call.payload)
        mail = EmailMessage()
        mail["From"] = smtp.sender
        mail["To"] = to
        mail["Subject"] = subject
        mail["Date"] = formatdate(usegmt=True)
        mail["Message-ID"] = message_id(call.gid, call.branch_id)
        mail.set_content(body)
        # The barrier row is held (uncommitted) while the mail goes out: a concurrent repeat
        # of this step waits for this one's outcome instead of sending a second mail.
        try:
            await aiosmtplib.send(mail, hostname=smtp.host, port=smtp.port, timeout=smtp.timeout_s)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # Rolls back the barrier row too: the coordinator's next delivery tries again.
            raise RetryLater(f"the mail server did not take the mail: {exc}") from exc
        await conn.execute(
            "INSERT INTO mails (message_id, gid, branch_id, recipient, subject)"
            " VALUES ($1, $2, $3, $4, $5)",
            mail["Message-ID"],
            call.gid,
            call.branch_id,
            to,
            subject,
        )
        log.info("mail_sent", to=to, message_id=mail["Message-ID"])
        return {"sent": mail["Message-ID"], "to": to}

    return send_mail


async def list_mails(request: web.Request) -> web.Response:
    rows = await request.app[POOL].fetch(
        "SELECT message_id, gid, branch_id, recipient, subject, sent_at FROM mails"
        " ORDER BY sent_at DESC LIMIT 100"
    )
    base = request.app[COORDINATOR].rstrip("/")
    return web.json_response(
        [
            {
                **dict(r),
                "sent_at": r["sent_at"].isoformat(),
                "transaction": f"{base}/v1/transactions/{quote(r['gid'], safe='')}",
            }
            for r in rows
        ]
    )


def create_app(
    database_url: str,
    smtp: Smtp,
    *,
    coordinator: str = "http://127.0.0.1:36789",
    schema: str = "notify",
) -> web.Application:
    app = web.Application()
    app[SMTP] = smtp
    app[COORDINATOR] = coordinator
    app.cleanup_ctx.append(database(database_url, schema, MIGRATIONS))
    app.add_routes([message_route(POOL, "/notify/action", make_send_mail(smtp))])
    app.router.add_get("/mails", list_mails)
    return app
