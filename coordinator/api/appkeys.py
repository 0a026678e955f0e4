"""Typed keys for what the aiohttp application carries."""

from __future__ import annotations

from aiohttp import web

from coordinator.api.sessions import Sessions
from coordinator.core.apikeys import KeyRing
from coordinator.core.hosts import AllowedHosts
from coordinator.engine.consoles import SessionBook
from coordinator.engine.service import Coordinator
from coordinator.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
COORDINATOR = web.AppKey("coordinator", Coordinator)
KEYRING = web.AppKey("keyring", KeyRing)
SESSIONS = web.AppKey("sessions", Sessions)
ALLOWED_HOSTS = web.AppKey("allowed_hosts", AllowedHosts)
SESSION_BOOK = web.AppKey("session_book", SessionBook)
