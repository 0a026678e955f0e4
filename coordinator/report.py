"""Plain-text views of the transaction log, for the CLI and the demo."""

from __future__ import annotations

import json
from typing import Any

from coordinator.core.breaker import BreakerState
from coordinator.core.records import Participant, ParticipantUsage, TransactionDetail
from coordinator.core.states import PHASE_TWO_STATUSES


def format_time(value: Any) -> str:
    return value.isoformat(timespec="milliseconds") if value is not None else "-"


def columns(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def format_detail(detail: TransactionDetail) -> str:
    t = detail.transaction
    lines = [
        f"transaction {t.gid}",
        f"  status         {t.status.value}" + (f" ({t.cancel_reason})" if t.cancel_reason else ""),
        f"  dialect        {t.dialect}",
        f"  service        {t.service or '-'}",
        f"  created        {format_time(t.created_at)}",
        f"  deadline       {format_time(t.deadline)}",
        f"  decided        {format_time(t.decided_at)}",
        f"  finished       {format_time(t.finished_at)}",
        f"  rounds         {t.phase_attempts}",
    ]
    if t.next_attempt_at and t.status in PHASE_TWO_STATUSES:
        lines.append(f"  next retry     {format_time(t.next_attempt_at)}")
    if t.metadata:
        lines.append(f"  metadata       {json.dumps(t.metadata)}")
    lines.append("")
    table = [["BRANCH", "NAME", "STATUS", "CALLS", "LAST HTTP", "LAST ERROR"]]
    table += [
        [
            b.branch_id,
            b.name,
            b.status.value,
            str(b.attempts),
            str(b.last_http_status or "-"),
            (b.last_error or "")[:60],
        ]
        for b in detail.branches
    ]
    lines.append(columns(table) if detail.branches else "no branches")
    lines.append("")
    lines.append("timeline")
    for e in detail.events:
        parts = [format_time(e.at), e.kind]
        if e.branch_id:
            parts.append(f"branch={e.branch_id}")
        if e.http_status is not None:
            parts.append(f"http={e.http_status}")
        if e.latency_ms is not None:
            parts.append(f"{e.latency_ms:.1f}ms")
        if e.error:
            parts.append(f"error={e.error[:80]!r}")
        if e.repeats > 1:
            parts.append(f"x{e.repeats} until {format_time(e.last_at)}")
        extra = {k: v for k, v in e.detail.items() if v not in (None, False, [], {})}
        if extra:
            parts.append(json.dumps(extra, sort_keys=True))
        lines.append("  " + "  ".join(parts))
    if detail.more_events:
        lines.append(f"  ... the timeline goes on after {len(detail.events)} entries")
    return "\n".join(lines)


def format_participant(p: Participant) -> str:
    breaker = p.breaker_state.value
    if p.breaker_state is not BreakerState.CLOSED:
        breaker += f" since {format_time(p.breaker_since)}: {p.breaker_reason or '-'}"
        if p.breaker_retry_at is not None and p.breaker_state is BreakerState.OPEN:
            breaker += f" (next probe {format_time(p.breaker_retry_at)})"
    lines = [
        f"participant {p.name}",
        f"  base url       {p.base_url or '-'}",
        f"  try            {p.try_url or '- (its callers run their tries)'}",
        f"  confirm        {p.confirm_url}",
        f"  cancel         {p.cancel_url}",
        f"  health         {p.health_url or '- (the probe is one real call)'}",
        f"  call timeout   {f'{p.call_timeout_s:g} s' if p.call_timeout_s else '-'}",
        f"  tls profile    {p.tls_profile or '- (by host rule, else the default)'}",
        f"  owner service  {p.owner_service or '-'}",
        f"  breaker        {breaker}",
        f"  registered     {format_time(p.created_at)}, last {format_time(p.updated_at)}"
        f" by {p.registered_by or '-'}",
    ]
    return "\n".join(lines)


def format_participants(rows: list[tuple[Participant, ParticipantUsage]]) -> str:
    table = [["NAME", "BREAKER", "CALLS/MIN", "ERRORS", "WAITING", "LATENCY AVG/MAX MS (15 MIN)"]]
    for p, usage in rows:
        calls = sum(u.calls for u in usage.phases)
        errors = sum(u.errors for u in usage.phases)
        latency = ", ".join(
            f"{u.phase.value} {u.latency_ms_avg:.1f}/{u.latency_ms_max:.1f}"
            for u in usage.phases
            if u.latency_ms_avg is not None and u.latency_ms_max is not None
        )
        table.append(
            [
                p.name,
                p.breaker_state.value,
                f"{calls / max(len(usage.calls_by_minute), 1):.1f}",
                f"{errors / calls:.1%}" if calls else "-",
                str(usage.waiting),
                latency or "-",
            ]
        )
    return columns(table) if rows else "no participant is registered (tcc participants register)"
