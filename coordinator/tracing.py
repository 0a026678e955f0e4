"""One trace per transaction, across every branch, phase, coordinator and restart.

W3C trace context (`traceparent`, `tracestate`) comes in on any request of either API and is
made current for it (api/app.py). A begin's span is the transaction's root: its context is
kept in the log with the transaction. Every later span of that transaction (a try, a decision,
a phase-two round, a participant call), whichever coordinator makes it and however long after,
is a child of the current span when that belongs to the same trace, else of the stored
context. Each participant call carries its span's context in `traceparent` / `tracestate`.

Spans are exported over OTLP when TCC_OTLP_ENDPOINT is set (the `otel` extra installs the SDK
and the exporter). Without it nothing is recorded, yet the context still travels: the
OpenTelemetry API's non-recording spans carry the caller's ids, so participants see the
caller's trace.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    TracerProvider,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from coordinator.core.errors import UsageError

TRACER_NAME = "tcc-coordinator"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

_PROPAGATOR = TraceContextTextMapPropagator()
_tracer: Tracer = trace.NoOpTracer()
# False until a provider is set: then a "span" makes no span at all (a non-recording one would
# only repeat its parent's ids), which keeps tracing off the hot path's CPU bill.
_recording = False
_shutdown: list[Any] = []  # the SDK provider we made, to flush at exit


@dataclass(frozen=True, slots=True)
class StoredTrace:
    """A transaction's trace context as the log keeps it (the two W3C header values)."""

    traceparent: str
    tracestate: str | None = None


def use_tracer_provider(provider: TracerProvider | None) -> None:
    """Record spans with ``provider`` (None: record nothing, only propagate). Tests pass
    one with an in-memory exporter; `configure_export` passes the OTLP one."""
    global _tracer, _recording
    _tracer = provider.get_tracer(TRACER_NAME) if provider is not None else trace.NoOpTracer()
    _recording = provider is not None


def configure_export(endpoint: str | None, instance: str) -> None:
    """Export spans over OTLP/HTTP to ``endpoint`` (e.g. http://collector:4318/v1/traces)."""
    if not endpoint:
        return
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise UsageError(
            "otlp_endpoint needs the OpenTelemetry SDK and exporter:"
            " pip install 'tcc-coordinator[otel]'"
        ) from exc
    resource = Resource.create({"service.name": TRACER_NAME, "service.instance.id": instance})
    provider = SdkTracerProvider(resource=resource)
    # Batched, in a thread of its own: exporting never waits on the request path.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    use_tracer_provider(provider)
    _shutdown.append(provider)


def shutdown() -> None:
    """Flush what is still queued for export (at stop)."""
    while _shutdown:
        _shutdown.pop().shutdown()
        use_tracer_provider(None)


# --- the context -----------------------------------------------------------------------


def attach_incoming(headers: Mapping[str, str]) -> object | None:
    """Make a request's trace context current; a token for `detach`, None if it sent none
    (or an invalid one, which W3C says to ignore)."""
    if TRACEPARENT not in headers:
        return None
    ctx = _PROPAGATOR.extract(headers)
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return otel_context.attach(ctx)


def detach(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]


# What the log keeps of a caller's tracestate: whole members, at most this long. W3C allows
# 32 members of up to about 512 characters; a header must never fail a transaction.
MAX_STORED_TRACESTATE = 512


def current() -> StoredTrace | None:
    """The current span's context, to keep with a transaction; None outside any trace."""
    headers = outgoing_headers()
    parent = headers.get(TRACEPARENT)
    if not parent:
        return None
    return StoredTrace(parent, _bounded(headers.get(TRACESTATE)))


def _bounded(tracestate: str | None) -> str | None:
    """The first members of a tracestate that fit MAX_STORED_TRACESTATE (W3C: when a
    tracestate is cut, whole members go, from the end)."""
    if tracestate is None or len(tracestate) <= MAX_STORED_TRACESTATE:
        return tracestate
    kept: list[str] = []
    length = 0
    for member in tracestate.split(","):
        length += len(member) + (1 if kept else 0)
        if length > MAX_STORED_TRACESTATE:
            break
        kept.append(member)
    return ",".join(kept) or None


def outgoing_headers() -> dict[str, str]:
    """The headers that carry the current context to a participant (W3C trace context,
    version 00: what the propagator would write, without its generic machinery)."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    headers = {
        TRACEPARENT: f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}"
        f"-{span_context.trace_flags:02x}"
    }
    if span_context.trace_state:
        headers[TRACESTATE] = span_context.trace_state.to_header()
    return headers


def ids() -> tuple[str, str] | None:
    """The current trace and span ids (hex), for log lines."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


def _parent(stored: StoredTrace | None) -> otel_context.Context | None:
    """The current context if it belongs to the transaction's trace (or the transaction
    has none); else the stored one: a transaction's spans stay in one trace."""
    if stored is None:
        return None  # the current context
    mine = trace.get_current_span().get_span_context()
    # traceparent is 00-<trace id>-<span id>-<flags>: compare the ids before parsing anything.
    if mine.is_valid and stored.traceparent[3:35] == f"{mine.trace_id:032x}":
        return None
    carrier = {TRACEPARENT: stored.traceparent}
    if stored.tracestate:
        carrier[TRACESTATE] = stored.tracestate
    kept = _PROPAGATOR.extract(carrier)
    theirs = trace.get_current_span(kept).get_span_context()
    if not theirs.is_valid or (mine.is_valid and mine.trace_id == theirs.trace_id):
        return None
    return kept


@contextlib.contextmanager
def span(
    name: str,
    *,
    stored: StoredTrace | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    start_time_ns: int | None = None,
    **attributes: str | int | float | bool | None,
) -> Iterator[Span]:
    """A span of a transaction's work, current while the block runs; an exception marks it
    failed. ``stored``: the transaction's trace context from the log; ``start_time_ns``:
    when the work began, for a span opened only once its trace is known."""
    if not _recording:
        with _unrecorded(stored) as context_span:
            yield context_span
        return
    shown = {f"tcc.{k}": v for k, v in attributes.items() if v is not None}
    with _tracer.start_as_current_span(
        name, context=_parent(stored), kind=kind, attributes=shown, start_time=start_time_ns
    ) as current_span:
        yield current_span


@contextlib.contextmanager
def _unrecorded(stored: StoredTrace | None) -> Iterator[Span]:
    """What `span` does when nothing records: the transaction's context made current (the
    caller's, the stored one, or fresh ids), so that calls and log lines still carry it."""
    parent = _parent(stored)
    if parent is not None:
        token = otel_context.attach(parent)
        try:
            yield trace.get_current_span()
        finally:
            otel_context.detach(token)
        return
    current_span = trace.get_current_span()
    if current_span.get_span_context().is_valid:
        yield current_span
        return
    with trace.use_span(_made_up(), end_on_exit=False) as made_up:
        yield made_up


def _made_up() -> Span:
    """A span context with fresh random ids, recording nothing: the root of a transaction
    nobody sent a trace for, so that it still has one trace id that every participant call
    carries (and its logs can be joined on)."""
    return NonRecordingSpan(
        SpanContext(
            trace_id=random.getrandbits(128) or 1,
            span_id=random.getrandbits(64) or 1,
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.DEFAULT),
        )
    )


def annotate(target: Span, **attributes: str | int | float | bool | None) -> None:
    """Add what is known only at the end (a status, an HTTP code) to a span."""
    if not target.is_recording():
        return
    for key, value in attributes.items():
        if value is not None:
            target.set_attribute(f"tcc.{key}", value)


def mark_failed(target: Span, description: str) -> None:
    if target.is_recording():
        target.set_status(Status(StatusCode.ERROR, description))


def stored_of(traceparent: str | None, tracestate: str | None) -> StoredTrace | None:
    return StoredTrace(traceparent, tracestate) if traceparent else None


__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "SpanKind",
    "StoredTrace",
    "annotate",
    "attach_incoming",
    "configure_export",
    "current",
    "detach",
    "ids",
    "mark_failed",
    "outgoing_headers",
    "shutdown",
    "span",
    "stored_of",
    "use_tracer_provider",
]
