"""`tcc conformance` as a developer runs it: a real `tcc` process against participants
served on 127.0.0.1: the samples on a real Postgres, and tests/participants/broken.py, whose
modes each break the protocol in one place and must fail exactly the scenarios that show it."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from coordinator.core.apikeys import hash_key
from participants.inventory.app import create_app as inventory_app
from participants.wallet.app import create_app as wallet_app
from tests.conftest import MakeCoordinator
from tests.participants.broken import Mode
from tests.participants.broken import create_app as broken_app
from tests.processes import free_port, run_tcc_async

pytestmark = pytest.mark.slow

# How long the broken participant's slow tries take; the slow scenario gives them a second.
SLOW_S = 2.0
PAYLOADS = {
    "wallet": {"account": "alice", "amount": 1},
    "inventory": {"sku": "book", "qty": 1},
}
TCC_SCENARIOS = [
    "try_then_confirm",
    "try_then_cancel",
    "repeated_confirm",
    "repeated_cancel",
    "cancel_without_try",
    "try_after_cancel",
    "concurrent_confirms",
    "confirm_after_slow_try",
    "malformed_try",
    "error_bodies",
]
SAGA_SCENARIOS = [
    "action_then_compensate",
    "repeated_action",
    "repeated_compensate",
    "compensate_without_action",
    "action_after_compensate",
    "concurrent_actions",
    "malformed_action",
    "error_bodies",
]
# The tool cannot make a fast participant slow: that one scenario says so instead of passing.
CANNOT_BE_FORCED = {"confirm_after_slow_try"}


async def serve(app: web.Application) -> TestServer:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


def base_of(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def samples(database_url: str) -> AsyncIterator[dict[str, str]]:
    """Wallet and inventory on a real Postgres: their TCC URLs' common prefix, by name."""
    wallet = await serve(wallet_app(database_url))
    inventory = await serve(inventory_app(database_url))
    try:
        yield {"wallet": f"{base_of(wallet)}/tcc", "inventory": f"{base_of(inventory)}/tcc"}
    finally:
        await inventory.close()
        await wallet.close()


@pytest.fixture
async def broken() -> AsyncIterator[str]:
    server = await serve(broken_app(slow_s=SLOW_S))
    try:
        yield base_of(server)
    finally:
        await server.close()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCC_")}
    return {**env, **extra}


def tcc_flags(prefix: str, *, check: bool = True) -> list[str]:
    flags = ["--try", f"{prefix}/try", "--confirm", f"{prefix}/confirm"]
    flags += ["--cancel", f"{prefix}/cancel"]
    return flags + (["--check-url", f"{prefix}/check"] if check else [])


def saga_flags(prefix: str) -> list[str]:
    return [
        *("--action", f"{prefix}/action", "--compensate", f"{prefix}/compensate"),
        *("--check-url", f"{prefix}/check"),
    ]


async def conformance(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    return await run_tcc_async("conformance", *args, env=env or clean_env(), timeout_s=180)


async def report(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    code, out, err = await conformance(*args, "--json", env=env)
    assert out, err
    return code, json.loads(out)


def results(out: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["result"] for s in out["scenarios"]}


def failed(out: dict[str, Any]) -> set[str]:
    return {name for name, result in results(out).items() if result == "FAIL"}


def advice_of(out: dict[str, Any], name: str) -> str:
    return " ".join(next(s["advice"] for s in out["scenarios"] if s["name"] == name))


def one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tcc conformance: "), err
    return lines[0]


# --- the samples -------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["v1", "dtm"])
@pytest.mark.parametrize("sample", ["wallet", "inventory"])
async def test_samples__pass_every_scenario_the_tool_can_bring_about(
    samples: dict[str, str], sample: str, dialect: str
) -> None:
    code, out = await report(
        *tcc_flags(samples[sample]),
        *("--payload", json.dumps(PAYLOADS[sample]), "--dialect", dialect),
    )
    seen = results(out)
    assert list(seen) == TCC_SCENARIOS
    assert code == 0, out
    for name, result in seen.items():
        allowed = {"pass", "not observable"} if name in CANNOT_BE_FORCED else {"pass"}
        assert result in allowed, (name, out)
    assert out["ok"] is True
    assert out["participant"]["dialect"] == dialect


async def test_sample_without_the_check_url__passes_on_its_replies_and_says_what_it_cannot_see(
    samples: dict[str, str],
) -> None:
    code, out, _ = await conformance(
        *tcc_flags(samples["wallet"], check=False), "--payload", json.dumps(PAYLOADS["wallet"])
    )
    assert code == 0, out
    assert "repeated confirm (idempotence) (repeated_confirm): not observable" in out
    assert "try then confirm (try_then_confirm): pass" in out
    words = " ".join(out.split())  # as printed, but unwrapped
    assert "only the check URL can show it (--check-url)" in words
    assert "0 FAIL" in words
    assert '"not observable" does not fail the run' in words


# --- broken participants: each fails what its defect breaks, with what to fix -------------


@pytest.mark.parametrize(
    ("mode", "dialect", "failures", "fix"),
    [
        (Mode.CORRECT, "v1", set(), None),
        (Mode.CORRECT, "dtm", set(), None),
        (
            Mode.APPLIES_TWICE,
            "v1",
            {"repeated_confirm", "concurrent_confirms"},
            "the repeated confirm took effect again",
        ),
        (
            Mode.ERROR_ON_REPEAT,
            "v1",
            {"repeated_confirm", "concurrent_confirms"},
            "Answer a repeat as the first call was answered (2xx) and change nothing",
        ),
        (
            Mode.ERROR_ON_REPEAT,
            "dtm",
            {"repeated_confirm", "concurrent_confirms"},
            "Answer a repeat as the first call was answered (2xx) and change nothing",
        ),
        (
            Mode.EMPTY_CANCEL_FAILS,
            "v1",
            {"cancel_without_try"},
            "With no try there is nothing to undo",
        ),
        # v1 reads 404 to a cancel as "nothing to undo", so the cancel passes; but it recorded
        # nothing, and the late try then reserves. DTM retries a 404.
        (Mode.EMPTY_CANCEL_404, "v1", {"try_after_cancel"}, "have try do nothing"),
        (Mode.EMPTY_CANCEL_404, "dtm", {"cancel_without_try"}, "nothing to undo"),
        (
            Mode.RESERVES_AFTER_CANCEL,
            "v1",
            {"try_after_cancel"},
            "a try that arrives after its cancel must change nothing",
        ),
        (
            Mode.ERROR_BODY,
            "v1",
            {"malformed_try", "error_bodies"},
            "keep 2xx bodies free of errors",
        ),
        (Mode.ERROR_BODY, "dtm", {"malformed_try", "error_bodies"}, "takes for a reservation"),
    ],
)
async def test_broken_participant__fails_exactly_what_its_defect_breaks(
    broken: str, mode: Mode, dialect: str, failures: set[str], fix: str | None
) -> None:
    code, out = await report(
        *tcc_flags(f"{broken}/{mode.value}"),
        *("--payload", '{"amount": 1}', "--dialect", dialect),
    )
    assert failed(out) == failures, out
    assert code == (1 if failures else 0)
    assert out["ok"] is not failures
    if fix is not None:
        assert any(fix in advice_of(out, name) for name in failures), out


@pytest.mark.parametrize(
    ("mode", "dialect", "failures"),
    [
        (Mode.CORRECT, "v1", set()),
        (Mode.CORRECT, "dtm", set()),
        (Mode.APPLIES_TWICE, "v1", {"repeated_action", "concurrent_actions"}),
        (Mode.ERROR_ON_REPEAT, "dtm", {"repeated_action", "concurrent_actions"}),
        (Mode.EMPTY_CANCEL_FAILS, "v1", {"compensate_without_action"}),
        (Mode.RESERVES_AFTER_CANCEL, "v1", {"action_after_compensate"}),
        (Mode.ERROR_BODY, "v1", {"malformed_action", "error_bodies"}),
    ],
)
async def test_broken_saga_step__fails_exactly_what_its_defect_breaks(
    broken: str, mode: Mode, dialect: str, failures: set[str]
) -> None:
    code, out = await report(
        *saga_flags(f"{broken}/{mode.value}"), "--payload", '{"n": 1}', "--dialect", dialect
    )
    assert list(results(out)) == SAGA_SCENARIOS
    assert out["participant"]["kind"] == "saga"
    assert failed(out) == failures, out
    assert code == (1 if failures else 0)


async def test_broken_participant__the_text_report_says_what_it_saw_and_what_to_fix(
    broken: str,
) -> None:
    code, out, _ = await conformance(*tcc_flags(f"{broken}/{Mode.APPLIES_TWICE.value}"))
    assert code == 1
    assert "repeated confirm (idempotence) (repeated_confirm): FAIL" in out
    assert "check after both confirms: held=false applied=2 undone=0" in out
    words = " ".join(out.split())  # as printed, but unwrapped
    assert "FIX after both confirms the check URL shows applied=2 (expected 1)" in words
    assert "FAIL            repeated_confirm: repeated confirm (idempotence)" in out
    assert "See each FAIL's FIX above." in out


async def test_slow_try__cancelled_when_it_outlasts_the_timeout__must_then_reserve_nothing(
    broken: str,
) -> None:
    """A try slower than --timeout is cancelled while it runs, as the coordinator would; the
    correct participant's late try finds the cancel's row, the unguarded one reserves."""
    outcomes = {}
    for mode in (Mode.SLOW_TRY, Mode.SLOW_UNGUARDED_TRY):
        _, out = await report(
            *tcc_flags(f"{broken}/{mode.value}"),
            *("--only", "confirm_after_slow_try", "--timeout", str(SLOW_S / 2)),
        )
        (scenario,) = out["scenarios"]
        steps = [e["step"] for e in scenario["evidence"]]
        assert steps[:3] == ["note", "cancel", "try"], scenario  # the cancel overtook the try
        outcomes[mode] = scenario
    assert outcomes[Mode.SLOW_TRY]["result"] == "pass"
    unguarded = outcomes[Mode.SLOW_UNGUARDED_TRY]
    assert unguarded["result"] == "FAIL"
    assert "held=true" in " ".join(unguarded["advice"])
    assert "in one database transaction" in " ".join(unguarded["advice"])


# --- the registry ---------------------------------------------------------------------

KEYS = {"shop": "shop-key-0123456789", "ops": "ops-key-0123456789"}
API_KEYS = f"shop:service:{hash_key(KEYS['shop'])},ops:admin:{hash_key(KEYS['ops'])}"


async def test_participant_from_the_registry__its_urls_and_timeout(
    make_coordinator: MakeCoordinator, broken: str
) -> None:
    """A real coordinator's registry (GET /v1/participants/{name}); any key may read it."""
    coordinator = await make_coordinator(insecure=False, api_keys=API_KEYS)
    prefix = f"{broken}/{Mode.CORRECT.value}"
    admin = {"Authorization": f"Bearer {KEYS['ops']}"}
    registrations = {
        "stock": {"base_url": prefix, "call_timeout_s": 5},
        # No try URL: its callers run their tries, or it is a saga step.
        "courier": {"confirm_url": f"{prefix}/action", "cancel_url": f"{prefix}/compensate"},
    }
    for name, body in registrations.items():
        status, out, _ = await coordinator.request(
            "PUT", f"/v1/participants/{name}", body, headers=admin
        )
        assert status == 201, out
    env = clean_env(TCC_URL=coordinator.base, TCC_API_KEY=KEYS["shop"])
    check = ["--check-url", f"{prefix}/check"]

    code, out = await report("--participant", "stock", *check, env=env)
    assert code == 0, out
    assert out["participant"]["kind"] == "tcc"
    assert out["participant"]["dialect"] == "v1"  # the registry names no dialect
    assert out["participant"]["timeout_s"] == 5.0
    assert out["participant"]["urls"] == {
        phase: f"{prefix}/{phase}" for phase in ("try", "confirm", "cancel")
    }
    assert "registry" in out["participant"]["source"]
    code, out = await report("--participant", "stock", "--dialect", "dtm", *check, env=env)
    assert (code, out["participant"]["dialect"]) == (0, "dtm")

    code, out = await report("--participant", "courier", "--saga", *check, env=env)
    assert code == 0, out
    assert out["participant"]["kind"] == "saga"
    assert out["participant"]["urls"] == {
        "action": f"{prefix}/action",
        "compensate": f"{prefix}/compensate",
    }
    code, _, err = await conformance("--participant", "courier", env=env)
    assert code == 2
    assert "give --try URL to check it as TCC, or --saga" in one_line(err)

    code, _, err = await conformance("--participant", "nope", env=env)
    assert code == 1
    assert "no participant named 'nope'" in one_line(err)

    code, _, err = await conformance(
        "--participant", "stock", "--url", coordinator.base, "--api-key", "wrong-key-0123456789"
    )
    assert code == 1
    assert "refused the request (401" in one_line(err)


# --- mistakes: one line, never a traceback --------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "give --try, --confirm and --cancel"),
        (["--try", "http://127.0.0.1:9/try"], "--confirm and --cancel missing"),
        (["--action", "http://127.0.0.1:9/a", "--try", "http://127.0.0.1:9/t"], "either TCC"),
        (["--try", "ftp://x", "--confirm", "http://h/c", "--cancel", "http://h/x"], "http(s)"),
        (["--action", "http://h/a", "--compensate", "http://h/c", "--payload", "{x"], "not JSON"),
        (["--action", "http://h/a", "--compensate", "http://h/c", "--timeout", "0"], "--timeout"),
        (["--action", "http://h/a", "--compensate", "http://h/c", "--dialect", "grpc"], "v1"),
        (["--action", "http://h/a", "--compensate", "http://h/c", "--url", "http://h"], "--url"),
        (["--participant", "x", "--cancel", "http://h/t"], "--cancel cannot go with it"),
        (["--participant", "x", "--saga", "--try", "http://h/t"], "a saga step has no try"),
        (["--saga", "--action", "http://h/a", "--compensate", "http://h/c"], "for --participant"),
        (["--dialect"], "expected one argument"),
    ],
)
async def test_command_line_mistakes__one_line_and_exit_status_2(
    args: list[str], says: str
) -> None:
    code, out, err = await conformance(*args)
    assert code == 2
    assert out == ""
    assert says in one_line(err)


async def test_unknown_scenario__one_line_naming_those_there_are(broken: str) -> None:
    code, _, err = await conformance(*tcc_flags(f"{broken}/correct"), "--only", "repeated_try")
    assert code == 2
    assert "unknown scenario repeated_try" in one_line(err)
    assert "repeated_confirm" in err


async def test_participant_down__one_line_and_exit_status_1() -> None:
    down = f"http://127.0.0.1:{free_port()}/tcc"
    code, out, err = await conformance(*tcc_flags(down, check=False))
    assert code == 1
    assert out == ""
    assert f"cannot reach the participant at {down}/try" in one_line(err)


async def test_check_url_breaking_its_contract__stops_before_any_scenario(
    samples: dict[str, str], broken: str
) -> None:
    wallet = samples["wallet"]
    not_a_check = ["--check-url", wallet.removesuffix("/tcc") + "/accounts"]  # a JSON list
    code, out, err = await conformance(*tcc_flags(wallet, check=False), *not_a_check)
    assert code == 1
    assert out == ""
    assert "not a JSON object" in one_line(err)
    code, _, err = await conformance(
        *tcc_flags(f"{broken}/correct", check=False), "--check-url", f"{broken}/correct/nope"
    )
    assert code == 1
    assert "answered 404" in one_line(err)
