"""Typed keys for what the aiohttp application carries."""

from __future__ import annotations

from aiohttp import web

from coordinator.engine import Engine
from coordinator.settings import Settings
from coordinator.store import Store
from coordinator.urlpolicy import ParticipantPolicy

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
ENGINE = web.AppKey("engine", Engine)
POLICY = web.AppKey("participant_policy", ParticipantPolicy)
