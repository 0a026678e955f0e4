"""`tcc conformance`'s report: per scenario its expectation, result, evidence and, for a
failure, what to fix; as text for people or as JSON for CI."""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from typing import Any

from coordinator.core.states import TransactionKind
from coordinator.devtools.conformance_probe import BRANCH_ID, Target
from coordinator.devtools.conformance_trial import Finding, Result

WIDTH = 100
LABEL = len(Result.NOT_OBSERVABLE.value)  # the widest result word
NOTE = (
    '"not observable" does not fail the run: it marks what neither the replies nor the check'
    " URL could show, or a case the tool cannot bring about"
)


def ok(findings: list[Finding]) -> bool:
    return all(f.result is not Result.FAIL for f in findings)


def tally(findings: list[Finding]) -> Counter[Result]:
    return Counter(f.result for f in findings)


def as_text(target: Target, findings: list[Finding]) -> str:
    what = "TCC participant" if target.kind is TransactionKind.TCC else "saga step"
    lines = [
        f"tcc conformance: a {what}, the {target.dialect.value} dialect, each call given up to"
        f" {target.timeout_s:g}s",
    ]
    rows = [*target.urls.items(), ("check", target.check_url or "none (--check-url)")]
    rows.append(("payload", json.dumps(target.payload)))
    lines += [f"  {name:<10} {value}" for name, value in rows]
    lines.append(f"  (URLs from {target.source})")
    for finding in findings:
        lines += ["", *_scenario_lines(finding)]
    lines += ["", f"{'RESULT':<{LABEL}}  SCENARIO"]
    lines += [f"{f.result.value:<{LABEL}}  {f.name}: {f.title}" for f in findings]
    counts = tally(findings)
    scenarios = "scenario" if len(findings) == 1 else "scenarios"
    verdict = "No scenario failed." if ok(findings) else "See each FAIL's FIX above."
    lines.append("")
    lines.append(
        f"{len(findings)} {scenarios}: {counts[Result.PASS]} pass, {counts[Result.FAIL]} FAIL,"
        f" {counts[Result.NOT_OBSERVABLE]} not observable. {verdict}"
    )
    if counts[Result.NOT_OBSERVABLE]:
        lines += _wrapped("", NOTE, "")
    return "\n".join(lines)


def _scenario_lines(f: Finding) -> list[str]:
    pad, rest = "    ", " " * 14
    lines = [f"{f.title} ({f.name}): {f.result.value}"]
    lines += _wrapped(pad + "expected  ", f.expectation, rest)
    if f.gid is not None:
        lines.append(f"{pad}gid       {f.gid}, branch {BRANCH_ID}")
    for n, item in enumerate(f.evidence):
        lines += _wrapped(pad + ("saw       " if n == 0 else " " * 10), item.text, rest + "  ")
    for text in f.advice:
        lines += _wrapped(pad + "FIX       ", text, rest)
    for text in f.unseen:
        lines += _wrapped(pad + "unseen    ", text, rest)
    return lines


def _wrapped(first: str, text: str, rest: str) -> list[str]:
    return textwrap.wrap(
        text,
        WIDTH,
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=False,
        break_on_hyphens=False,
    ) or [first.rstrip()]


def as_json(target: Target, findings: list[Finding]) -> str:
    counts = tally(findings)
    report: dict[str, Any] = {
        "participant": {
            "kind": target.kind.value,
            "dialect": target.dialect.value,
            "urls": target.urls,
            "check_url": target.check_url,
            "payload": target.payload,
            "timeout_s": target.timeout_s,
            "source": target.source,
        },
        "scenarios": [
            {
                "name": f.name,
                "title": f.title,
                "expectation": f.expectation,
                "result": f.result.value,
                "gid": f.gid,
                "branch_id": BRANCH_ID,
                "evidence": [{"step": e.step, "text": e.text, **e.detail} for e in f.evidence],
                "advice": list(f.advice),
                "unseen": list(f.unseen),
            }
            for f in findings
        ],
        "summary": {
            "pass": counts[Result.PASS],
            "fail": counts[Result.FAIL],
            "not_observable": counts[Result.NOT_OBSERVABLE],
        },
        "ok": ok(findings),
        "note": NOTE,
    }
    return json.dumps(report, indent=2)
