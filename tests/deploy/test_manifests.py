"""The Kubernetes manifests (deploy/k8s) and the ECS task definitions (deploy/ecs): valid by
their platforms' own schemas (kubernetes-validate's, strict; botocore's model of
RegisterTaskDefinition), and naming only what is real: tcc's commands, its settings, the
paths it serves on the port it listens on, one image for the job and the service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import botocore.session
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from botocore.validate import ParamValidator

from coordinator.settings import Settings
from tests.deploy.checks import cli_problem, coordinator_get_paths, unknown_settings, url_path

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
ECS = ROOT / "deploy" / "ecs"
KUBERNETES_VERSION = "1.30.0"


def k8s_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in k8s_documents() if d["kind"] == kind]
    return doc


@pytest.mark.parametrize(
    "doc", k8s_documents(), ids=lambda d: f"{d['kind']}-{d['metadata']['name']}"
)
def test_k8s__each_manifest_is_valid_by_the_kubernetes_schema_strictly(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_k8s__the_strict_schema_refuses_a_misspelt_field() -> None:
    deployment = k8s("Deployment")
    deployment["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_k8s__has_a_deployment_a_migration_job_a_service_and_a_disruption_budget() -> None:
    kinds = sorted(d["kind"] for d in k8s_documents())
    assert kinds == ["ConfigMap", "Deployment", "Job", "PodDisruptionBudget", "Secret", "Service"]
    deployment = k8s("Deployment")
    assert deployment["spec"]["replicas"] == 2
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == pod_labels
    for kind in ("Service", "PodDisruptionBudget"):
        spec = k8s(kind)["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= pod_labels.items(), kind
    assert k8s("PodDisruptionBudget")["spec"]["minAvailable"] == 1


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = doc["spec"]["template"]["spec"]["containers"]
    return containers


def test_k8s__commands_are_tcc_commands_on_one_image_run_as_non_root() -> None:
    (job,) = _containers(k8s("Job"))
    (coordinator,) = _containers(k8s("Deployment"))
    assert job["args"] == ["migrate"]
    assert coordinator["args"] == ["serve"]
    for container in (job, coordinator):
        assert "command" not in container  # the image's entry point: tcc
        assert not cli_problem(container["args"])
    assert job["image"] == coordinator["image"]
    for doc in (k8s("Job"), k8s("Deployment")):
        security = doc["spec"]["template"]["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == 10001  # the image's user


def test_k8s__every_variable_is_a_setting_and_the_job_and_pods_read_the_same() -> None:
    config = k8s("ConfigMap")["data"]
    secret = k8s("Secret")["stringData"]
    assert not unknown_settings([*config, *secret])
    assert all(name.startswith("TCC_") for name in [*config, *secret])
    # Settings(...) accepts the values (the example secret's key hash included).
    values = {name.removeprefix("TCC_").lower(): value for name, value in config.items()}
    Settings(**values, api_keys=secret["TCC_API_KEYS"])
    for doc in (k8s("Job"), k8s("Deployment")):
        (container,) = _containers(doc)
        refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert refs == {"tcc-coordinator"}
        assert not unknown_settings(e["name"] for e in container.get("env", []))


def test_k8s__probes_hit_paths_tcc_serves_on_the_port_it_listens_on() -> None:
    (container,) = _containers(k8s("Deployment"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(k8s("ConfigMap")["data"]["TCC_PORT"])}
    paths = coordinator_get_paths()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in paths, probe
        assert get["port"] in ports, probe
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    service_port = k8s("Service")["spec"]["ports"][0]
    assert service_port["targetPort"] in ports


def test_k8s__termination_grace_covers_the_pre_stop_pause_and_the_shutdown_grace() -> None:
    deployment = k8s("Deployment")
    (container,) = _containers(deployment)
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = float(k8s("ConfigMap")["data"]["TCC_SHUTDOWN_GRACE_S"])
    total = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert total >= pause + grace + 5


# --- ECS -------------------------------------------------------------------------------------


def task_definitions() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(ECS.glob("*.json"))}


@pytest.mark.parametrize("name", sorted(task_definitions()))
def test_ecs__task_definition_is_valid_by_botocores_model_of_register_task_definition(
    name: str,
) -> None:
    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    assert shape is not None
    report = ParamValidator().validate(task_definitions()[name], shape)
    assert not report.has_errors(), report.generate_report()
    # The check can fail: an unknown parameter is refused.
    broken = {**task_definitions()[name], "containerDefinition": []}
    assert ParamValidator().validate(broken, shape).has_errors()


def test_ecs__a_service_task_and_a_migration_task_on_one_image_with_tcc_commands() -> None:
    tasks = task_definitions()
    assert set(tasks) == {"task-definition.json", "migrate-task-definition.json"}
    (service,) = tasks["task-definition.json"]["containerDefinitions"]
    (migrate,) = tasks["migrate-task-definition.json"]["containerDefinitions"]
    assert service["command"] == ["serve"]
    assert migrate["command"] == ["migrate"]
    assert service["image"] == migrate["image"]
    for container in (service, migrate):
        assert not cli_problem(container["command"])
        assert "entryPoint" not in container
        names = [e["name"] for e in container["environment"] + container["secrets"]]
        assert not unknown_settings(names)
        assert all(n.startswith("TCC_") for n in names)
        assert container["user"] == "10001"
    secret_names = {s["name"] for s in service["secrets"]}
    assert {"TCC_DATABASE_URL", "TCC_API_KEYS"} <= secret_names


def test_ecs__healthcheck_and_stop_timeout_fit_the_coordinator() -> None:
    (service,) = task_definitions()["task-definition.json"]["containerDefinitions"]
    env = {e["name"]: e["value"] for e in service["environment"]}
    port, path = url_path(" ".join(service["healthCheck"]["command"]))
    assert service["healthCheck"]["command"][0] == "CMD"
    assert path == "/readyz"
    assert path in coordinator_get_paths()
    assert port == int(env["TCC_PORT"]) == service["portMappings"][0]["containerPort"]
    assert service["stopTimeout"] > float(env["TCC_SHUTDOWN_GRACE_S"]) + 5
