"""buildah and podman for the image tests: a private container store, a base image made with
debootstrap (no registry is reachable), builds that mount the machine's CA bundle and pip
configuration without baking them in, and build logs read step by step."""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import resource
import shutil
import subprocess
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

TOOLS = ("buildah", "podman", "runc", "debootstrap")
SUITE = "bookworm"

# Inside a build, pip must reach the configured package index as it does here: the same
# settings (its configuration files in pip's order, then PIP_* variables, merged into one file)
# and the CA bundle, mounted read-only for each RUN step, never copied in.
PIP_CONFIG_FILES = (  # lowest precedence first
    Path("/etc/xdg/pip/pip.conf"),
    Path("/etc/pip.conf"),
    Path.home() / ".pip" / "pip.conf",
    Path.home() / ".config" / "pip" / "pip.conf",
)
CA_DIRS = (Path("/etc/ssl/certs"),)


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def ulimits() -> tuple[int, int]:
    """nofile and nproc for containers: the hard limits here, which runc may not exceed
    without CAP_SYS_RESOURCE (and nproc kept modest: a container needs few processes)."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nofile = 65536 if nofile == resource.RLIM_INFINITY else min(nofile, 65536)
    nproc = 4096 if nproc == resource.RLIM_INFINITY else min(nproc, 4096)
    return nofile, nproc


@dataclass
class Engine:
    """buildah and podman on a store of their own (layers, build cache mounts, networks
    untouched by anything else on the machine), with runc and explicit ulimits."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path) -> Engine:
        root.mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(exist_ok=True)
        nofile, nproc = ulimits()
        storage = root / "storage.conf"
        storage.write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{root / "graph"}"\n'
            f'runroot = "{root / "run"}"\n'
        )
        containers = root / "containers.conf"
        containers.write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
        )
        env = {
            **os.environ,
            "CONTAINERS_STORAGE_CONF": str(storage),
            "CONTAINERS_CONF": str(containers),
            # buildah keeps RUN --mount=type=cache directories under TMPDIR.
            "TMPDIR": str(root / "tmp"),
        }
        return cls(root, env)

    def run(
        self,
        *args: str,
        timeout: float = 600,
        check: bool = True,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(args),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            input=input_text,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args[:6])}... exited {proc.returncode}\n"
                f"stdout: {proc.stdout[-4000:]}\nstderr: {proc.stderr[-4000:]}"
            )
        return proc

    def podman(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run("podman", "--runtime", "runc", *args, **kwargs)  # type: ignore[arg-type]

    def build(
        self,
        context: Path,
        tag: str,
        *,
        build_args: dict[str, str] | None = None,
        pip_mounts: bool = True,
    ) -> Build:
        """buildah bud, timed; --network host (the build reaches the package index as this
        machine does); the CA bundle and pip configuration mounted read-only (pip_mounts)."""
        nofile, nproc = ulimits()
        args = [
            "buildah",
            "bud",
            "--runtime",
            "runc",
            "--network",
            "host",
            "--format",
            "docker",  # keeps HEALTHCHECK and STOPSIGNAL, which OCI images drop
            "--layers",
            "--ulimit",
            f"nofile={nofile}:{nofile}",
            "--ulimit",
            f"nproc={nproc}:{nproc}",
            *(build_mounts(self.root) if pip_mounts else []),
            "--tag",
            tag,
        ]
        for key, value in (build_args or {}).items():
            args += ["--build-arg", f"{key}={value}"]
        started = time.monotonic()
        proc = self.run(*args, str(context), timeout=1200)
        return Build(time.monotonic() - started, proc.stdout + proc.stderr)


def pip_settings() -> configparser.ConfigParser:
    """pip's effective settings here: its configuration files, later ones winning, then the
    PIP_* environment variables (PIP_FIND_LINKS is find-links in [global])."""
    merged = configparser.ConfigParser(interpolation=None)
    for path in PIP_CONFIG_FILES:
        if path.is_file():
            with contextlib.suppress(configparser.Error):
                merged.read(path)
    if not merged.has_section("global"):
        merged.add_section("global")
    for key, value in os.environ.items():
        if key.startswith("PIP_") and key != "PIP_CONFIG_FILE":
            merged["global"][key.removeprefix("PIP_").lower().replace("_", "-")] = value
    return merged


def build_mounts(workdir: Path) -> list[str]:
    """-v for pip's merged settings (as /etc/pip.conf), the CA directories, and the local
    paths the settings name (find-links, file:// indexes, constraints, certificates)."""
    settings = pip_settings()
    config = workdir / "pip.conf"
    with config.open("w") as f:
        settings.write(f)
    sources: list[Path] = [p for p in CA_DIRS if p.exists()]
    for section in settings.sections():
        for value in settings[section].values():
            sources += _local_paths(value)
    mounts = ["-v", f"{config}:/etc/pip.conf:ro"]
    kept: list[Path] = []
    for path in sorted(set(sources), key=lambda p: len(p.parts)):
        if any(path.is_relative_to(parent) for parent in kept):
            continue
        kept.append(path)
        mounts += ["-v", f"{path}:{path}:ro"]
    return mounts


def _local_paths(value: str) -> list[Path]:
    """The local paths a pip setting names. A file:// index (".../simple") links to files
    beside it, so the whole tree above it goes in."""
    paths = []
    for raw in value.split():
        path = Path(raw.removeprefix("file://"))
        if path.is_absolute() and path.exists():
            paths.append(path.parent if path.name == "simple" else path)
    return paths


@dataclass
class Step:
    instruction: str
    cached: bool


@dataclass
class Build:
    seconds: float
    log: str

    @property
    def steps(self) -> list[Step]:
        """Each step of the log, and whether buildah took it from its cache."""
        steps: list[Step] = []
        for line in self.log.splitlines():
            found = re.match(r"^(?:\[\d+/\d+\] )?STEP \d+/\d+: (.*)$", line)
            if found:
                steps.append(Step(found[1], cached=False))
            elif line.startswith("--> Using cache") and steps:
                steps[-1].cached = True
        return steps

    def step(self, pattern: str) -> Step:
        matching = [s for s in self.steps if re.search(pattern, s.instruction)]
        assert len(matching) == 1, f"{len(matching)} steps match {pattern!r}:\n{self.log[-3000:]}"
        return matching[0]


# --- a base image without a registry ------------------------------------------------------


def debian_mirror() -> str:
    """The Debian mirror apt already uses here (deb822 .sources files or sources.list)."""
    candidates: list[Path] = []
    sources_dir = Path("/etc/apt/sources.list.d")
    if sources_dir.is_dir():
        candidates += sorted(sources_dir.glob("*.sources"))
    for path in candidates:
        for stanza in path.read_text().split("\n\n"):
            fields = {
                k.strip().lower(): v.strip()
                for k, _, v in (ln.partition(":") for ln in stanza.splitlines())
                if not k.startswith("#") and v
            }
            suites = fields.get("suites", "").split()
            if SUITE in suites and fields.get("uris"):
                return fields["uris"].split()[0]
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                return next(p for p in parts[1:] if not p.startswith("["))
    raise AssertionError(f"no {SUITE} mirror in apt's sources")


# What the imported root file system leaves out: apt's caches and lists, documentation.
_SKIPPED = (
    "var/cache/apt/archives/",
    "var/cache/apt/pkgcache.bin",
    "var/cache/apt/srcpkgcache.bin",
    "var/lib/apt/lists/",
    "usr/share/doc/",
    "usr/share/man/",
    "usr/share/locale/",
    "usr/share/info/",
)


def debootstrap_image(engine: Engine, workdir: Path, tag: str) -> None:
    """debootstrap --variant=minbase, then podman import of the tree as an image."""
    rootfs = workdir / "rootfs"
    mirror = debian_mirror()
    engine.run("debootstrap", "--variant=minbase", SUITE, str(rootfs), mirror, timeout=900)
    tarball = workdir / "rootfs.tar"

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        name = info.name.removeprefix("./")
        if any(name.startswith(s) and name != s.rstrip("/") for s in _SKIPPED):
            return None
        return info

    with tarfile.open(tarball, "w") as tar:
        tar.add(rootfs, arcname=".", filter=keep)
    engine.podman("import", str(tarball), tag, timeout=300)
    shutil.rmtree(rootfs, ignore_errors=True)
    tarball.unlink()


def derived_image(engine: Engine, workdir: Path, base: str, tag: str, lines: Sequence[str]) -> None:
    """A small image FROM base: the given Containerfile lines, built with buildah."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "Containerfile").write_text("\n".join([f"FROM {base}", *lines]) + "\n")
    # No pip here, and apt's ca-certificates must write /etc/ssl/certs: nothing mounted.
    engine.build(workdir, tag, pip_mounts=False)
