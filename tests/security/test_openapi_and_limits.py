"""The OpenAPI document, fuzzing the API from it, size limits, and secrets in output."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from coordinator.api.openapi import build, markdown
from coordinator.core.apikeys import hash_key
from tests.conftest import CoordinatorClient
from tests.participant_server import FakeParticipant
from tests.processes import CoordinatorProcess, run_tcc, tcc_env

MakeCoordinator = Callable[..., Awaitable[CoordinatorClient]]
ROOT = Path(__file__).resolve().parents[2]


async def test_openapi__is_served_and_the_reference_doc_is_in_step(
    coordinator: CoordinatorClient,
) -> None:
    status, served = await coordinator.get("/openapi.json")
    assert status == 200
    assert served == json.loads(json.dumps(build()))
    assert served["openapi"] == "3.1.0"
    assert served["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    begin = served["paths"]["/v1/transactions"]["post"]
    assert begin["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/BeginIn"
    )
    assert "application/problem+json" in begin["responses"]["422"]["content"]
    assert (ROOT / "docs" / "api.md").read_text() == markdown(build()), (
        "docs/api.md is stale: python -m coordinator.api.openapi --markdown > docs/api.md"
    )


@pytest.mark.slow
async def test_fuzzing_the_whole_api_from_its_openapi_document__no_500_and_schema_conformant(
    database_url: str, tmp_path: Path
) -> None:
    key = "fuzz-admin-key-0123456789"
    proc = CoordinatorProcess(
        database_url,
        tmp_path,
        insecure="false",
        api_keys=f"fuzz:admin:{hash_key(key)}",
        call_timeout_s=0.5,
        confirm_wait_s=0.5,
    )
    await proc.start()
    try:
        result = await asyncio.to_thread(
            subprocess.run,
            [
                str(Path(sys.executable).with_name("st")),
                "run",
                f"{proc.base}/openapi.json",
                "-H",
                f"Authorization: Bearer {key}",
                "--checks",
                "not_a_server_error,response_schema_conformance,"
                "status_code_conformance,content_type_conformance",
                "--phases",
                "coverage,fuzzing",
                # Bounded by a number of examples per operation, never by time: under
                # --max-time schemathesis keeps drawing cases until the budget is spent.
                "--max-examples",
                "40",
                "--seed",
                "7",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            cwd=tmp_path,  # schemathesis writes a cache folder where it runs
        )
    finally:
        proc.stop()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
    assert '"request_crashed"' not in proc.logs()


async def test_payload_and_metadata__over_their_limits__are_422(
    make_coordinator: MakeCoordinator, participant: FakeParticipant
) -> None:
    c = await make_coordinator(max_payload_bytes=100, max_metadata_bytes=50)
    status, body = await c.post("/v1/transactions", {"gid": "m", "metadata": {"k": "v" * 60}})
    assert status == 422
    assert "metadata:" in body["detail"]
    await c.post("/v1/transactions", {"gid": "p"})
    status, body = await c.post(
        "/v1/transactions/p/try", participant.branch("b", payload={"blob": "x" * 200})
    )
    assert status == 422
    assert "payload:" in body["detail"]
    assert participant.calls == []


async def test_too_many_headers__are_refused(make_coordinator: MakeCoordinator) -> None:
    c = await make_coordinator(max_headers=16)
    headers = {f"X-Filler-{i}": "x" for i in range(40)}
    status, _, _ = await c.request("GET", "/healthz", headers=headers)
    assert status == 400


async def test_dtm_branch_header_values__never_shown(coordinator: CoordinatorClient) -> None:
    await coordinator.post(
        "/api/dtmsvr/prepare",
        {
            "gid": "sec",
            "trans_type": "tcc",
            "branch_headers": {"Authorization": "Bearer s3cr3t"},
        },
    )
    _, v1 = await coordinator.get("/v1/transactions/sec")
    assert v1["options"]["branch_headers"] == {"Authorization": "***"}
    _, dtm = await coordinator.get("/api/dtmsvr/query?gid=sec")
    assert dtm["transaction"]["branch_headers"] == {"Authorization": "***"}
    assert "s3cr3t" not in json.dumps(v1) + json.dumps(dtm)


def test_serve__without_keys_or_insecure__refuses_to_start(database_url: str) -> None:
    env = tcc_env(database_url)
    del env["TCC_INSECURE"]
    result = run_tcc("serve", env=env)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "no API keys configured" in line


def test_key_hash__prints_an_entry_the_configuration_accepts() -> None:
    key = "a-long-enough-secret-key"
    result = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "key-hash", "shop", "--scope", "admin"],
        input=key + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"shop:admin:{hash_key(key)}"
    assert key not in result.stdout
    short = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "key-hash", "shop"],
        input="short\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert short.returncode == 2
    assert "at least 16 characters" in short.stderr
