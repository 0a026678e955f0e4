"""What the deployment files may name: tcc's commands, its settings, the paths the
coordinator and the samples serve, the samples' flags."""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence

from aiohttp import web

from coordinator.api.routes import V1_ROUTES
from coordinator.cli import build_parser
from coordinator.settings import Settings

SAMPLES = ("participants.wallet", "participants.inventory", "participants.order")


def cli_problem(args: Sequence[str]) -> str | None:
    """None if `tcc ARGS` parses with tcc's own parser; else what argparse said."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            build_parser().parse_args(list(args))
    except SystemExit:
        return f"tcc {' '.join(args)}: {stderr.getvalue().strip().splitlines()[-1]}"
    return None


def unknown_settings(names: Iterable[str]) -> list[str]:
    """TCC_* names that are not settings (coordinator.settings.Settings)."""
    known = {f"TCC_{name.upper()}" for name in Settings.model_fields}
    return sorted(n for n in names if n.startswith("TCC_") and n not in known)


def coordinator_get_paths() -> set[str]:
    return {r.path for r in V1_ROUTES if isinstance(r, web.RouteDef) and r.method == "GET"}


@functools.cache
def sample_get_paths(module: str) -> set[str]:
    """The GET paths a sample's app serves (the app is built, never started)."""
    app_module = importlib.import_module(f"{module}.app")
    if module.endswith("order"):
        peers = app_module.Peers("http://c", "http://w", "http://i", "http://o")
        app = app_module.create_app("postgresql://unused/x", peers)
    else:
        app = app_module.create_app("postgresql://unused/x")
    return {
        route.resource.canonical
        for route in app.router.routes()
        if route.method == "GET" and route.resource is not None
    }


@functools.cache
def sample_flags(module: str) -> set[str]:
    """The flags `python -m <sample> --help` lists."""
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", out))


def sample_problem(module: str, args: Sequence[str]) -> str | None:
    """None if `python -m MODULE ARGS` names a sample and only flags it has."""
    if module not in SAMPLES:
        return f"{module} is not a sample participant"
    flags = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    unknown = sorted(flags - sample_flags(module))
    return f"python -m {module}: unknown flags {unknown}" if unknown else None


def url_path(url: str) -> tuple[int, str]:
    """Port and path of an http URL in a healthcheck or probe command."""
    found = re.search(r"http://[^/:'\"]+:(\d+|%s)(/[A-Za-z0-9_/.-]*)", url)
    assert found, f"no http URL in {url!r}"
    port = int(found[1]) if found[1].isdigit() else -1
    return port, found[2]
