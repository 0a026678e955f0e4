"""Typed keys for what the aiohttp application carries."""

from __future__ import annotations

from aiohttp import web

from coordinator.core.urlpolicy import ParticipantPolicy
from coordinator.engine.driver import Engine
from coordinator.settings import Settings
from coordinator.txlog.postgres import Store

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
ENGINE = web.AppKey("engine", Engine)
POLICY = web.AppKey("participant_policy", ParticipantPolicy)
