"""The lock files agree with pyproject.toml: every declared dependency is pinned, with hashes,
at a version its specifier admits; nothing is pinned for a dependency no longer declared; the
image's lock pins what the tests ran; and docs/deploy.md gives the command that remade them."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "tcc-coordinator"
# How uv names pyproject.toml as the source of a pin.
FROM_PYPROJECT = f"{PROJECT} (pyproject.toml)"


@dataclass
class Pin:
    name: str
    version: Version
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


@dataclass
class Lock:
    command: str
    pins: dict[str, Pin]


def read_lock(path: Path) -> Lock:
    """A uv (or pip-compile) requirements file with hashes and `# via` annotations."""
    pins: dict[str, Pin] = {}
    command = ""
    current: Pin | None = None
    in_via = False
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#    uv pip compile") and not command:
            command = stripped.removeprefix("#").strip()
            continue
        pin = re.match(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", line)
        if pin:
            current = Pin(canonicalize_name(pin[1]), Version(pin[2]))
            pins[current.name] = current
            in_via = False
            continue
        if current is None:
            continue
        if stripped.startswith("--hash=sha256:"):
            current.hashes.append(stripped.removeprefix("--hash=").rstrip(" \\"))
        elif stripped.startswith("# via "):
            current.via.append(stripped.removeprefix("# via ").strip())
        elif stripped == "# via":
            in_via = True
        elif in_via and stripped.startswith("#   "):
            current.via.append(stripped.removeprefix("#").strip())
    return Lock(command, pins)


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def declared(*extras: str) -> list[Requirement]:
    """The project's dependencies plus those of the extras, with self-references expanded."""
    project = pyproject()["project"]
    assert isinstance(project, dict)
    optional: dict[str, list[str]] = project["optional-dependencies"]
    out = [Requirement(r) for r in project["dependencies"]]
    pending = list(extras)
    seen: set[str] = set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for raw in optional[extra]:
            req = Requirement(raw)
            if canonicalize_name(req.name) == PROJECT:
                pending.extend(req.extras)
            else:
                out.append(req)
    return out


LOCKS = {
    # the image's lock: the service and its OTLP export
    "requirements.lock": ("otel",),
    # what CI and developers install
    "requirements-dev.lock": ("dev",),
}


@pytest.mark.parametrize(("name", "extras"), LOCKS.items())
def test_lock__pins_every_declared_dependency_at_an_admitted_version_with_hashes(
    name: str, extras: tuple[str, ...]
) -> None:
    lock = read_lock(ROOT / name)
    assert len(lock.pins) > 10, f"{name} looks empty"
    problems = []
    for req in declared(*extras):
        pin = lock.pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req} is declared but not pinned")
        elif not req.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{req} is declared but {pin.name}=={pin.version} is pinned")
    unhashed = [p.name for p in lock.pins.values() if not p.hashes]
    assert not problems, f"{name} disagrees with pyproject.toml: {problems}; remake the locks"
    assert not unhashed, f"{name} pins without hashes: {unhashed}"


@pytest.mark.parametrize(("name", "extras"), LOCKS.items())
def test_lock__pins_nothing_for_a_dependency_no_longer_declared(
    name: str, extras: tuple[str, ...]
) -> None:
    lock = read_lock(ROOT / name)
    direct = {p.name for p in lock.pins.values() if FROM_PYPROJECT in p.via}
    wanted = {canonicalize_name(r.name) for r in declared(*extras)}
    assert direct == wanted, (
        f"{name} was made from other dependencies than pyproject.toml declares now:"
        f" only in the lock {sorted(direct - wanted)}, only in pyproject {sorted(wanted - direct)}"
    )
    orphans = [p.name for p in lock.pins.values() if not p.via]
    assert not orphans, f"{name} pins what nothing needs: {orphans}"


def test_image_lock__pins_the_versions_the_tests_ran() -> None:
    image = read_lock(ROOT / "requirements.lock").pins
    dev = read_lock(ROOT / "requirements-dev.lock").pins
    differ = [
        f"{n}: {p.version} vs {dev[n].version}"
        for n, p in image.items()
        if n in dev and p.version != dev[n].version
    ]
    missing = sorted(set(image) - set(dev))
    assert not differ, f"requirements.lock and requirements-dev.lock differ: {differ}"
    assert not missing, f"pinned for the image but not for the tests: {missing}"


def test_build_lock__pins_the_build_backend_pyproject_asks_for() -> None:
    build_system = pyproject()["build-system"]
    assert isinstance(build_system, dict)
    lock = read_lock(ROOT / "requirements-build.lock")
    for raw in build_system["requires"]:
        req = Requirement(raw)
        pin = lock.pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{req} (build-system.requires) is not in requirements-build.lock"
        assert req.specifier.contains(pin.version), f"{req} vs {pin.name}=={pin.version}"
        assert all(p.hashes for p in lock.pins.values())


@pytest.mark.parametrize("name", [*LOCKS, "requirements-build.lock"])
def test_lock__was_made_by_the_command_docs_deploy_gives(name: str) -> None:
    command = read_lock(ROOT / name).command
    assert command.startswith("uv pip compile"), f"{name} has no uv header"
    assert "--universal" in command
    assert "--generate-hashes" in command
    assert command.removeprefix("uv ") in (ROOT / "docs" / "deploy.md").read_text(), (
        f"docs/deploy.md does not give the command that made {name}: {command}"
    )


def test_read_lock__sees_a_changed_specifier(tmp_path: Path) -> None:
    """The checks above can fail: a pin outside the declared range is caught."""
    lock = tmp_path / "x.lock"
    lock.write_text(
        "aiohttp==2.0.0 \\\n    --hash=sha256:00\n    # via tcc-coordinator (pyproject.toml)\n"
    )
    pins = read_lock(lock).pins
    req = next(r for r in declared() if r.name == "aiohttp")
    assert pins["aiohttp"].via == [FROM_PYPROJECT]
    assert not req.specifier.contains(pins["aiohttp"].version)
