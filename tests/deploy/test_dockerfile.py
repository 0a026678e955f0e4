"""The Dockerfile and .dockerignore, read without building (test_image.py builds them): the
dependency layer depends on the lock files alone, the context admits what the build copies and
nothing else, and the runtime stage is what docs/deploy.md says."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for word, rest in instructions():
        if word == "FROM":
            name = rest.split(" AS ")[-1].strip()
            current = found.setdefault(name, [])
        elif current is not None:
            current.append((word, rest))
    return found


def _regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `**/` any directories (or none), `*` and `?`
    within one path element, `[...]` a class."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            close = pattern.index("]", i)
            out, i = out + pattern[i : close + 1], close + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(path: str) -> bool:
    """Docker's rule: a path is left out when the last pattern matching it, or one of its
    parent directories, excludes; `!` admits again."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        admit = pattern.startswith("!")
        regex = _regex(pattern.removeprefix("!").rstrip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            verdict = not admit
    return verdict


def test_dependency_layer__is_built_from_the_lock_files_alone() -> None:
    deps = stages()["deps"]
    copies = [rest for word, rest in deps if word == "COPY"]
    assert copies == [
        "requirements-build.lock /tmp/requirements-build.lock",
        "requirements.lock /tmp/requirements.lock",
    ]
    runs = [rest for word, rest in deps if word == "RUN"]
    install = next(r for r in runs if "requirements.lock" in r)
    assert "--mount=type=cache,target=/root/.cache/pip" in install
    assert "--require-hashes" in install
    assert "--only-binary=:all:" in install
    # The project comes after, in a stage of its own, without dependencies.
    app = stages()["app"]
    assert any(word == "COPY" and rest.startswith("coordinator ") for word, rest in app)
    assert all("--no-deps" in rest for word, rest in app if word == "RUN" and "install" in rest)


def test_runtime_stage__copies_only_has_no_run_step_and_runs_tcc_as_non_root_on_sigterm() -> None:
    runtime = dict(stages()["runtime"][::-1])  # the last of each kind
    words = [word for word, _ in stages()["runtime"]]
    assert "RUN" not in words
    copies = [rest for word, rest in stages()["runtime"] if word == "COPY"]
    assert all(c.startswith("--from=") for c in copies)
    assert {c.split()[-1] for c in copies} >= {"/opt/tcc", "/opt/app"}
    assert runtime["USER"] == "tcc"
    assert runtime["STOPSIGNAL"] == "SIGTERM"
    assert runtime["ENTRYPOINT"] == '["tcc"]'
    assert "/readyz" in runtime["HEALTHCHECK"]
    assert "urllib" in runtime["HEALTHCHECK"]
    assert "curl" not in runtime["HEALTHCHECK"]
    base = next(rest for word, rest in instructions() if word == "ARG")
    assert re.fullmatch(r"BASE_IMAGE=python:3\.\d+-slim-bookworm", base)


def test_dockerignore__admits_what_the_build_copies_and_keeps_out_the_rest() -> None:
    sources = [
        src
        for word, rest in instructions()
        if word == "COPY" and not rest.startswith("--from")
        for src in rest.split()[:-1]
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source), source
    for kept_out in [
        ".venv",
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "docs/deploy.md",
        "coordinator/__pycache__/cli.cpython-311.pyc",
        "participants/order/__pycache__",
        ".env",
        "pgdata/base",
    ]:
        assert ignored(kept_out), kept_out
    for admitted in ["coordinator/cli.py", "migrations/0001_transaction_log.sql"]:
        assert not ignored(admitted), admitted
