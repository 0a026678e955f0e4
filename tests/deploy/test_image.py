"""The image, built and run for real with buildah and podman (no Docker daemon needed).

One module, one base: debootstrap makes a Debian root file system from the mirror apt uses
here (no registry is reachable), podman imports it, and Debian's python3 goes on top. Then:

- the image builds; a changed source file rebuilds it with the dependency layer from the
  cache, in a fraction of the first build's time;
- the migration job, two coordinators and the three samples run from it against one Postgres
  (this machine's, host networking); an order confirms; a coordinator stopped with SIGTERM
  in the middle of a load leaves nothing behind that the other does not finish, and the
  books balance;
- podman-compose brings docker-compose.yml's core services up, healthchecks included, and
  an order placed through them confirms.

Figures (build times, image size) are printed and written to image-figures.json in the
test's temporary folder; docs/deploy.md quotes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml
from yarl import URL

from coordinator.core.apikeys import parse_keys
from tests.conftest import with_database
from tests.deploy.containers import (
    Build,
    Engine,
    debootstrap_image,
    derived_image,
    missing_tools,
)
from tests.deploy.test_compose import start_order

ROOT = Path(__file__).resolve().parents[2]
RUN_ID = uuid.uuid4().hex[:8]
MINBASE = f"localhost/tcc-test/debian:{RUN_ID}"
BASE = f"localhost/tcc-test/debian-python:{RUN_ID}"
IMAGE = f"localhost/tcc-test/tcc-coordinator:{RUN_ID}"

_missing = missing_tools()
pytestmark = [
    pytest.mark.container,
    pytest.mark.skipif(
        bool(_missing),
        reason=f"needs {', '.join(_missing)} (apt-get install buildah podman runc debootstrap;"
        " .ci/run installs them)",
    ),
    pytest.mark.skipif(
        os.geteuid() != 0, reason="runs rootful podman and debootstrap: needs root, as CI has"
    ),
]

# What the Dockerfile copies (.dockerignore admits nothing else).
CONTEXT = [
    "Dockerfile",
    ".dockerignore",
    "requirements-build.lock",
    "requirements.lock",
    "pyproject.toml",
    "README.md",
    "migrations",
    "coordinator",
    "participants",
]


@dataclass
class Built:
    engine: Engine
    image: str
    first: Build
    second: Build
    size_bytes: int
    figures_path: Path


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = Engine.create(tmp_path_factory.mktemp("containers"))
    yield engine
    # Containers first (they hold the store's mounts), then images, then the private store.
    # (Not `podman system reset`: networks are configured machine-wide, not in the store.)
    engine.podman("rm", "--all", "--force", "--time", "0", check=False, timeout=120)
    engine.run("buildah", "rm", "--all", check=False, timeout=120)
    engine.podman("rmi", "--all", "--force", check=False, timeout=300)
    shutil.rmtree(engine.root, ignore_errors=True)


@pytest.fixture(scope="module")
def base_image(engine: Engine) -> str:
    """Debian bookworm (minbase) from this machine's mirror, with Debian's python3."""
    work = engine.root / "base"
    work.mkdir()
    debootstrap_image(engine, work, MINBASE)
    derived_image(
        engine,
        work / "python",
        MINBASE,
        BASE,
        [
            "RUN apt-get update && apt-get install -y --no-install-recommends python3"
            " python3-venv && rm -rf /var/lib/apt/lists/*"
        ],
    )
    return BASE


@pytest.fixture(scope="module")
def built(engine: Engine, base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Two builds: the first from the repository, the second after one source file changed."""
    first = engine.build(ROOT, IMAGE, build_args={"BASE_IMAGE": base_image})
    changed = tmp_path_factory.mktemp("context")
    for name in CONTEXT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, changed / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, changed / name)
    with (changed / "coordinator" / "__init__.py").open("a") as f:
        f.write(f"# changed by the rebuild test {RUN_ID}\n")
    second = engine.build(changed, IMAGE, build_args={"BASE_IMAGE": base_image})
    info = json.loads(engine.podman("image", "inspect", IMAGE).stdout)[0]
    figures = {
        "first_build_s": round(first.seconds, 1),
        "rebuild_after_source_change_s": round(second.seconds, 1),
        "image_size_mb": round(info["Size"] / 1e6, 1),
        "base_image_size_mb": round(
            json.loads(engine.podman("image", "inspect", base_image).stdout)[0]["Size"] / 1e6, 1
        ),
        "second_build_cached_steps": [s.instruction[:80] for s in second.steps if s.cached],
    }
    path = tmp_path_factory.mktemp("figures") / "image-figures.json"
    path.write_text(json.dumps(figures, indent=2))
    print(f"\nimage figures ({path}): {json.dumps(figures)}")
    return Built(engine, IMAGE, first, second, int(info["Size"]), path)


# --- 1. the build, and its cache ------------------------------------------------------------


def test_rebuild_after_a_source_change__takes_the_dependency_layer_from_the_cache(
    built: Built,
) -> None:
    deps = r"^RUN .*requirements\.lock"
    # The private store starts empty: the first build really installed the dependencies...
    assert not built.first.step(deps).cached
    # ...and the second took them from the cache, and the runtime stage's copy of them too,
    assert built.second.step(deps).cached, built.second.log[-3000:]
    assert built.second.step(r"^RUN .*requirements-build\.lock").cached
    assert built.second.step(r"^COPY --from=deps /opt/tcc").cached
    # while the changed source was copied and the project installed anew.
    assert not built.second.step(r"^COPY coordinator").cached
    assert not built.second.step(r"^COPY --from=app").cached
    # A generous bound for a noisy machine: seen here about a fifth.
    assert built.second.seconds < 0.6 * built.first.seconds, (
        f"rebuild {built.second.seconds:.1f}s vs first build {built.first.seconds:.1f}s"
    )


def test_image__non_root_tcc_entrypoint_sigterm_healthcheck_no_compilers_no_tests(
    built: Built,
) -> None:
    info = json.loads(built.engine.podman("image", "inspect", built.image).stdout)[0]
    config = info["Config"]
    assert config["Entrypoint"] == ["tcc"]
    assert config["Cmd"] == ["serve"]
    assert config["User"] == "tcc"
    assert config["StopSignal"] == "SIGTERM"
    # podman shows a Docker-format image's healthcheck beside its config.
    health = " ".join((info.get("Healthcheck") or config["Healthcheck"])["Test"])
    assert "urllib" in health
    assert "/readyz" in health
    assert "curl" not in health
    probe = (
        "import os, shutil, importlib.util as u;"
        "print(os.getuid(), [t for t in ('gcc', 'cc', 'curl', 'pip') if shutil.which(t)],"
        " u.find_spec('tests') is not None, os.path.exists('/src'),"
        " os.path.exists('/etc/pip.conf'), u.find_spec('coordinator') is not None)"
    )
    out = built.engine.podman(
        "run", "--rm", "--network", "none", "--entrypoint", "python3", built.image, "-c", probe
    ).stdout.strip()
    # uid 10001; no compiler, curl or pip; no tests, no sources; no pip settings baked in.
    assert out.splitlines()[-1] == "10001 [] False False False True"


# --- 2. the system, from the image ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Database:
    host_url: str  # for this test
    container_url: str  # for the containers (host network)
    mounts: list[str]


@pytest.fixture
async def database(pg_admin_url: str) -> AsyncIterator[Database]:
    """A fresh database on this machine's Postgres. A Unix socket (the embedded server's) is
    bind-mounted into the containers; a TCP address is reached over the host network."""
    name = f"tcc_image_{RUN_ID}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    host_url = with_database(pg_admin_url, name)
    url = URL(host_url)
    socket_dir = url.query.get("host")
    mounts: list[str] = []
    container_url = host_url
    if socket_dir and socket_dir.startswith("/"):
        port = url.query.get("port") or str(url.port or 5432)
        sock = f".s.PGSQL.{port}"
        mounts = ["-v", f"{socket_dir}/{sock}:/run/tcc-pg/{sock}"]
        container_url = str(url.update_query(host="/run/tcc-pg"))
    yield Database(host_url, container_url, mounts)
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


class Stack:
    """Containers of the image on the host network, each named, removed at the end."""

    def __init__(self, built: Built, db: Database) -> None:
        self.engine = built.engine
        self.image = built.image
        self.db = db
        self.names: list[str] = []

    def run(self, name: str, *args: str, detach: bool = True, env: dict[str, str]) -> str:
        """podman run: ARGS are what follows the run flags (the image and a command, or
        --entrypoint, the image and arguments); none runs the image as it is (tcc serve)."""
        full = f"tcc-{RUN_ID}-{name}"
        self.names.append(full)
        flags = ["--detach"] if detach else []
        env_flags = [x for k, v in env.items() for x in ("--env", f"{k}={v}")]
        self.engine.podman(
            "run", *flags, "--name", full, "--network", "host",
            *self.db.mounts, *env_flags, self.image if not args else args[0], *args[1:],
            timeout=300,
        )  # fmt: skip
        return full

    def logs(self, name: str) -> str:
        proc = self.engine.podman("logs", name, check=False)
        return proc.stdout + proc.stderr

    def remove(self) -> None:
        for name in reversed(self.names):
            self.engine.podman("rm", "--force", "--time", "2", name, check=False)


async def wait_ready(http: aiohttp.ClientSession, url: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            async with http.get(url) as resp:
                if resp.status == 200:
                    return
                last = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = exc
        await asyncio.sleep(0.3)
    raise AssertionError(f"{url} not ready in {timeout_s}s: {last!r}")


async def books(conn: asyncpg.Connection) -> dict[str, int]:
    money = await conn.fetchrow(
        "SELECT sum(balance + frozen) AS total, sum(frozen) AS frozen,"
        " max(balance) FILTER (WHERE id = 'shop') AS shop FROM wallet.accounts"
    )
    units = await conn.fetchrow(
        "SELECT stock + reserved + sold AS total, reserved, sold FROM inventory.items"
        " WHERE sku = 'book'"
    )
    assert money is not None
    assert units is not None
    return {
        "money": money["total"],
        "frozen": money["frozen"],
        "shop": money["shop"],
        "units": units["total"],
        "reserved": units["reserved"],
        "sold": units["sold"],
    }


UNFINISHED = "SELECT count(*) FROM tcc_transactions WHERE status NOT IN ('confirmed', 'cancelled')"


async def test_stack__order_confirms_and_a_coordinator_stopped_mid_load_loses_nothing(
    built: Built, database: Database, tmp_path: Path
) -> None:
    stack = Stack(built, database)
    ports = {n: free_port() for n in ("a", "b", "wallet", "inventory", "order")}
    order_key = secrets.token_urlsafe(32)
    # The image's own `tcc key-hash` makes the configuration entry.
    entry = built.engine.podman(
        "run", "--rm", "-i", "--network", "none", built.image, "key-hash", "order",
        input_text=order_key + "\n",
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    assert [(k.name, k.scope.value) for k in parse_keys(entry)] == [("order", "service")]
    tcc_env = {
        "TCC_DATABASE_URL": database.container_url,
        "TCC_HOST": "127.0.0.1",
        "TCC_API_KEYS": entry,
        "TCC_MIGRATE": "false",
        # Exactly the three samples.
        "TCC_PARTICIPANT_ALLOW": ",".join(
            f"127.0.0.1:{ports[n]}" for n in ("wallet", "inventory", "order")
        ),
        # A lease that outlives the test's wait: only the release on SIGTERM lets the other
        # coordinator take over in time.
        "TCC_LEASE_TTL_S": "120",
        "TCC_SHUTDOWN_GRACE_S": "1",
        "TCC_RECOVERY_INTERVAL_S": "0.5",
        "TCC_RETRY_MAX_S": "2",
    }
    try:
        # The migration job: runs once, exits 0.
        migrate = stack.run("migrate", built.image, "migrate", detach=False, env=tcc_env)
        assert "applied 0001_transaction_log" in stack.logs(migrate)
        assert (
            built.engine.podman(
                "inspect", migrate, "--format", "{{.State.ExitCode}}"
            ).stdout.strip()
            == "0"
        )
        a = stack.run("coordinator-a", env={**tcc_env, "TCC_PORT": str(ports["a"])})
        b = stack.run("coordinator-b", env={**tcc_env, "TCC_PORT": str(ports["b"])})
        sample = ("--entrypoint", "python3", built.image, "-m")
        db_flag = f"--database-url={database.container_url}"
        stack.run(
            "wallet", *sample, "participants.wallet", db_flag, f"--port={ports['wallet']}", env={}
        )
        stack.run(
            "inventory", *sample, "participants.inventory", db_flag,
            f"--port={ports['inventory']}", env={},
        )  # fmt: skip
        stack.run(
            "order", *sample, "participants.order", db_flag, f"--port={ports['order']}",
            f"--coordinator-url=http://127.0.0.1:{ports['a']}",
            f"--wallet-url=http://127.0.0.1:{ports['wallet']}",
            f"--inventory-url=http://127.0.0.1:{ports['inventory']}",
            env={"ORDER_COORDINATOR_KEY": order_key},
        )  # fmt: skip
        timeout = aiohttp.ClientTimeout(total=30)
        auth = {"Authorization": f"Bearer {order_key}"}
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for name, path in [
                ("a", "/readyz"), ("b", "/readyz"), ("wallet", "/accounts"),
                ("inventory", "/items"), ("order", "/orders"),
            ]:  # fmt: skip
                await wait_ready(http, f"http://127.0.0.1:{ports[name]}{path}")
            # The image's HEALTHCHECK (python's urllib against /readyz) passes.
            for ctr in (a, b):
                assert built.engine.podman("healthcheck", "run", ctr, check=False).returncode == 0

            conn = await asyncpg.connect(database.host_url)
            try:
                before = await books(conn)
                # One order through the order sample; the other coordinator sees it confirmed.
                async with http.post(
                    f"http://127.0.0.1:{ports['order']}/checkout",
                    json={"customer": "alice", "sku": "book", "qty": 1},
                ) as resp:
                    body = await resp.json()
                    assert (resp.status, body["transaction"]) == (200, "confirmed"), body
                async with http.get(
                    f"http://127.0.0.1:{ports['b']}/v1/transactions/{body['order_id']}",
                    headers=auth,
                ) as resp:
                    assert (resp.status, (await resp.json())["status"]) == (200, "confirmed")

                stopped_at = await stop_a_coordinator_mid_load(stack, a, ports, http, conn)
                unfinished_at_stop = stopped_at["unfinished"]
                # The other coordinator finishes everything (timeouts of the tries cut off by
                # the stop included), well before any lease could have expired.
                for _ in range(180):  # 90 s at most
                    if not await conn.fetchval(UNFINISHED):
                        break
                    await asyncio.sleep(0.5)
                statuses = {
                    r["status"]: r["count"]
                    for r in await conn.fetch(
                        "SELECT status, count(*) FROM tcc_transactions GROUP BY 1"
                    )
                }
                assert set(statuses) <= {"confirmed", "cancelled"}, statuses
                finished_by_b = await conn.fetchval(
                    "SELECT count(*) FROM tcc_transactions WHERE finished_at > $1",
                    stopped_at["db_now"],
                )
                # A held work when it stopped, and all of it ended after the stop.
                assert unfinished_at_stop >= 1
                assert finished_by_b >= unfinished_at_stop
                # Nothing lost, nothing paid twice: each confirmed order paid, money and
                # units only moved, nothing left frozen or reserved.
                after = await books(conn)
                confirmed = await conn.fetchval(
                    "SELECT count(*) FROM tcc_transactions WHERE status = 'confirmed'"
                )
                mismatched = await conn.fetchval(
                    "SELECT count(*) FROM tcc_transactions t"
                    " LEFT JOIN orders.orders o ON o.id = t.gid"
                    " WHERE (t.status = 'confirmed') <> (coalesce(o.status, '') = 'paid')"
                    " OR o.status = 'pending'"
                )
                assert mismatched == 0
                assert (after["money"], after["units"]) == (before["money"], before["units"])
                assert (after["frozen"], after["reserved"]) == (0, 0)
                assert after["shop"] - before["shop"] == 12 * confirmed
                assert after["sold"] - before["sold"] == confirmed
            finally:
                await conn.close()
        (tmp_path / "stack.json").write_text(json.dumps({**stopped_at, "db_now": None}))
        print(f"\nstop mid-load: {stopped_at['unfinished']} unfinished at the stop, {statuses}")
    finally:
        for name in stack.names:
            (tmp_path / f"{name}.log").write_text(stack.logs(name))
        stack.remove()


async def stop_a_coordinator_mid_load(
    stack: Stack,
    a: str,
    ports: dict[str, int],
    http: aiohttp.ClientSession,
    conn: asyncpg.Connection,
) -> dict[str, Any]:
    """Checkouts run through coordinator A; the wallet is frozen (SIGSTOP) so that A holds
    work in flight; A gets SIGTERM (podman stop: the image's stop signal); the wallet thaws."""
    engine = stack.engine
    stop = asyncio.Event()
    done: list[int] = []

    async def shopper() -> None:
        for _ in range(25):  # bounded
            if stop.is_set():
                return
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.post(
                    f"http://127.0.0.1:{ports['order']}/checkout",
                    json={"customer": "alice", "sku": "book", "qty": 1, "timeout_s": 8},
                ) as resp:
                    done.append(resp.status)
            await asyncio.sleep(0.05)

    shoppers = [asyncio.create_task(shopper()) for _ in range(4)]
    wallet = f"tcc-{RUN_ID}-wallet"
    try:
        for _ in range(600):  # 60 s at most
            if len(done) >= 8:
                break
            await asyncio.sleep(0.1)
        assert len(done) >= 8, f"the load did not get going: {done}"
        engine.podman("kill", "--signal", "SIGSTOP", wallet)
        await asyncio.sleep(1.5)
        started = time.monotonic()
        await asyncio.to_thread(engine.podman, "stop", "--time", "30", a)
        stop_s = time.monotonic() - started
        db_now = await conn.fetchval("SELECT now()")
        unfinished = await conn.fetchval(UNFINISHED)
        exit_code = engine.podman("inspect", a, "--format", "{{.State.ExitCode}}").stdout
        assert exit_code.strip() == "0", stack.logs(a)[-3000:]
    finally:
        engine.podman("kill", "--signal", "SIGCONT", wallet, check=False)
        stop.set()
        await asyncio.gather(*shoppers, return_exceptions=True)
    return {
        "checkouts_before_stop": len(done),
        "stop_s": round(stop_s, 1),
        "unfinished": unfinished,
        "db_now": db_now,
        "a_released_leases": "lease_released_on_shutdown" in stack.logs(a),
    }


# --- 3. docker-compose.yml's core services, with podman-compose ----------------------------

# A stand-in for the official postgres image (which cannot be pulled here): Debian's
# PostgreSQL behind an entry point that honours the same POSTGRES_* variables and data path.
POSTGRES_ENTRYPOINT = """#!/bin/sh
set -e
BIN=$(echo /usr/lib/postgresql/*/bin)
PGDATA=/var/lib/postgresql/data
mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    printf '%s\\n' "$POSTGRES_PASSWORD" > /tmp/pw && chown postgres /tmp/pw
    runuser -u postgres -- "$BIN/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/pw \\
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f /tmp/pw
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
    runuser -u postgres -- "$BIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start
    runuser -u postgres -- "$BIN/createdb" -U "$POSTGRES_USER" "$POSTGRES_DB"
    runuser -u postgres -- "$BIN/pg_ctl" -D "$PGDATA" -w stop
fi
[ "$1" = postgres ] && shift
exec runuser -u postgres -- "$BIN/postgres" -D "$PGDATA" -c listen_addresses='*' "$@"
"""


@pytest.fixture(scope="module")
def postgres_image(engine: Engine, base_image: str) -> str:
    tag = f"localhost/tcc-test/postgres:{RUN_ID}"
    work = engine.root / "postgres"
    work.mkdir()
    (work / "entrypoint.sh").write_text(POSTGRES_ENTRYPOINT)
    derived_image(
        engine,
        work,
        MINBASE,
        tag,
        [
            "RUN apt-get update && apt-get install -y --no-install-recommends postgresql"
            " && rm -rf /var/lib/apt/lists/* && ln -s /usr/lib/postgresql/*/bin/pg_isready"
            " /usr/local/bin/pg_isready",
            "COPY entrypoint.sh /entrypoint.sh",
            "RUN chmod 755 /entrypoint.sh",
            'ENTRYPOINT ["/entrypoint.sh"]',
            'CMD ["postgres"]',
        ],
    )
    return tag


CORE = ["postgres", "migrate", "coordinator-1", "coordinator-2", "wallet", "inventory", "order"]


def test_compose__podman_compose_brings_the_core_up_and_an_order_confirms(
    built: Built, postgres_image: str, tmp_path: Path
) -> None:
    engine = built.engine
    project = f"tcc{RUN_ID}"
    ports = {
        n: free_port()
        for n in ("COORDINATOR_PORT", "COORDINATOR_2_PORT", "WALLET_PORT", "INVENTORY_PORT")
    }
    ports["ORDER_PORT"] = free_port()
    keys = {"order": secrets.token_urlsafe(32), "admin": secrets.token_urlsafe(32)}
    from coordinator.core.apikeys import hash_key

    env = {
        **engine.env,
        **{k: str(v) for k, v in ports.items()},
        "COORDINATOR_IMAGE": built.image,
        "POSTGRES_IMAGE": postgres_image,
        "POSTGRES_PASSWORD": secrets.token_urlsafe(16),
        "ORDER_COORDINATOR_KEY": keys["order"],
        "TCC_API_KEYS": f"order:service:{hash_key(keys['order'])},"
        f"admin:admin:{hash_key(keys['admin'])}",
        "GRAFANA_ADMIN_PASSWORD": "unused-here",
    }
    # podman-compose (a dev dependency) from this venv.
    compose = [
        sys.executable,
        "-m",
        "podman_compose",
        "--project-name",
        project,
        "--file",
        str(ROOT / "docker-compose.yml"),
    ]

    def pc(*args: str, timeout: float = 300, check: bool = True) -> str:
        proc = engine.run(*compose, *args, timeout=timeout, check=False)
        with (tmp_path / "podman-compose.log").open("a") as log:
            log.write(f"$ {' '.join(args)}\n{proc.stdout}\n{proc.stderr}\n")
        if check:
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    engine.env, saved = env, engine.env
    try:
        # The waves and conditions docker-compose.yml declares, each wave started with
        # --no-deps and its conditions checked here: podman 4.3 (Debian bookworm) has no `wait
        # --condition=healthy` (podman-compose skips service_healthy, saying so), and cannot
        # start a container whose --requires names one that has exited (a completed migrate).
        for wave in start_order():
            pc("up", "--detach", "--no-build", "--no-deps", *sorted(wave))
            for service in sorted(wave):
                await_condition(engine, f"{project}_{service}_1", wanted_condition(service))
        names = engine.podman(
            "ps", "--all", "--filter", f"label=io.podman.compose.project={project}",
            "--format", "{{.Names}}",
        ).stdout.split()  # fmt: skip
        assert set(names) == {f"{project}_{s}_1" for s in CORE}, names
        states = {
            name: engine.podman(
                "inspect", name, "--format", "{{.State.Status}} {{.State.ExitCode}}"
            ).stdout.strip()
            for name in names
        }
        assert states.pop(f"{project}_migrate_1") == "exited 0"
        assert set(states.values()) == {"running 0"}, states
        # Every long-running core service's own compose healthcheck passes in its container.
        for service in CORE:
            if service != "migrate":
                await_condition(engine, f"{project}_{service}_1", "service_healthy")
        # The coordinators find the samples by service name (the network's DNS knows the
        # last one started a moment ago).
        for coordinator in ("coordinator-1", "coordinator-2"):
            for sample in ("wallet", "inventory", "order"):
                await_condition(engine, f"{project}_{coordinator}_1", f"resolves:{sample}")
        result = asyncio.run(_checkout(ports["ORDER_PORT"], ports["COORDINATOR_2_PORT"], keys))
        assert result == ("confirmed", "confirmed"), result
    finally:
        for service in CORE:
            (tmp_path / f"compose-{service}.log").write_text(
                engine.podman("logs", f"{project}_{service}_1", check=False).stdout
            )
        pc("down", "--volumes", "--timeout", "5", timeout=300, check=False)
        engine.podman("network", "rm", "--force", f"{project}_default", check=False)
        engine.env = saved


def wanted_condition(service: str) -> str:
    """What the services that depend on this one wait for (service_started if none)."""
    found = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    core = [s for s in found.values() if not s.get("profiles")]
    wanted = {
        dep["condition"]
        for s in core
        for name, dep in s.get("depends_on", {}).items()
        if name == service
    }
    assert len(wanted) <= 1, (service, wanted)
    return wanted.pop() if wanted else "service_started"


def await_condition(engine: Engine, container: str, condition: str, timeout_s: float = 120) -> None:
    """Wait, bounded, until the container meets a compose condition (or resolves a name)."""
    if condition == "service_completed_successfully":
        engine.podman("wait", container, timeout=timeout_s)
        code = engine.podman("inspect", container, "--format", "{{.State.ExitCode}}").stdout
        assert code.strip() == "0", engine.podman("logs", container, check=False).stderr[-3000:]
        return
    if condition == "service_started":
        return
    if condition == "service_healthy":
        probe = ["healthcheck", "run", container]
    else:
        name = condition.removeprefix("resolves:")
        probe = [
            "exec", container, "python3", "-c",
            f"import socket; socket.getaddrinfo({name!r}, 80, type=socket.SOCK_STREAM)",
        ]  # fmt: skip
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s)):
        # A name must resolve promptly: right after a container joins, the network's DNS
        # server reloads and may leave a query unanswered for a resolver timeout or more.
        with contextlib.suppress(subprocess.TimeoutExpired):
            limit = 5 if condition.startswith("resolves:") else 20
            if engine.podman(*probe, check=False, timeout=limit).returncode == 0:
                return
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    logs = engine.podman("logs", container, check=False)
    raise AssertionError(f"{container}: {condition} not met\n{(logs.stdout + logs.stderr)[-3000:]}")


async def _checkout(order_port: int, other_port: int, keys: dict[str, str]) -> tuple[str, str]:
    """An order through the compose order sample (which calls "coordinator", either
    replica), then the transaction as the second coordinator sees it."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        await wait_ready(http, f"http://127.0.0.1:{order_port}/orders")
        async with http.post(
            f"http://127.0.0.1:{order_port}/checkout",
            json={"customer": "alice", "sku": "book", "qty": 2},
        ) as resp:
            body = await resp.json()
            assert resp.status == 200, body
        async with http.get(
            f"http://127.0.0.1:{other_port}/v1/transactions/{body['order_id']}",
            headers={"Authorization": f"Bearer {keys['admin']}"},
        ) as resp:
            seen = await resp.json()
            assert resp.status == 200, seen
        return body["transaction"], seen["status"]
