"""Console sessions in the log: opened at login, checked on every request that carries one,
ended by a logout, by `tcc sessions revoke`, or by removing the key that opened them.

The signed cookie (coordinator/api/sessions.py) proves who logged in; this book says whether
that login still stands. Kept in the log, so ending a session ends it on every coordinator
at once, and it stays ended across restarts and key restores.
"""

from __future__ import annotations

import structlog

from coordinator.core.apikeys import Scope
from coordinator.core.records import ConsoleSession, NewSession
from coordinator.txlog.interface import TransactionLog

log = structlog.get_logger(__name__)

# What `by` says when a coordinator ends the sessions of keys it was started without.
KEY_REMOVED = "key removed from TCC_API_KEYS"


class SessionBook:
    def __init__(self, txlog: TransactionLog) -> None:
        self.log = txlog

    async def open(self, new: NewSession) -> None:
        await self.log.open_session(new)

    async def is_live(self, session_id: str) -> bool:
        return await self.log.session_is_live(session_id)

    async def end(self, session_id: str, by: str) -> bool:
        """End one session (a logout); whether it was live."""
        return await self.log.revoke_sessions(by, id_prefix=session_id) > 0

    async def revoke(
        self, by: str, *, id_prefix: str | None = None, key_name: str | None = None
    ) -> int:
        """End the sessions chosen (one by its id's beginning, all of a key, or all);
        how many were live."""
        ended = await self.log.revoke_sessions(by, id_prefix=id_prefix, key_name=key_name)
        log.warning(
            "console_sessions_revoked", by=by, count=ended, key_name=key_name, session=id_prefix
        )
        return ended

    async def keep_only_keys(self, configured: list[tuple[str, Scope, str]]) -> int:
        """At start-up: end the sessions of every key this coordinator is not configured
        with (name, scope, digest), so that a removed key's sessions end everywhere and
        putting the key back does not revive them."""
        ended = await self.log.revoke_sessions_of_other_keys(KEY_REMOVED, configured)
        if ended:
            log.warning("console_sessions_of_removed_keys_ended", count=ended)
        return ended

    async def list(self, *, include_ended: bool, limit: int = 200) -> list[ConsoleSession]:
        return await self.log.list_sessions(include_ended=include_ended, limit=limit)
