"""OpenTelemetry traces across the queue: a span per save, and a span per worker batch linked
to the span of every save it applied.

Only `opentelemetry-api` is used (the `agentstore[otel]` extra); whoever runs the code
configures a tracer provider (an SDK, `opentelemetry-instrument`). Without the API, or while
no provider is configured, no span is made and a message carries no trace header: it is
byte for byte what it was before tracing existed, and costs one check per save.

A message carries, in its header `agentstore_traces`, one propagation carrier (what the
configured propagator injects, W3C `traceparent` by default) or null per op, in body order.
A batch takes ops from many messages and saves, so its span has links, not a parent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

try:
    from opentelemetry import propagate, trace
except ImportError:  # the `otel` extra is not installed: tracing stays off
    trace = None  # type: ignore[assignment]

HEADER = "agentstore_traces"
Carrier = dict[str, str]

_OFF: AbstractContextManager[Any] = contextlib.nullcontext()
_tracers: dict[str, tuple[object, Any]] = {}


def _tracer(scope: str) -> Any:
    """The configured provider's tracer, or None while there is none (the API's proxy)."""
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    cached = _tracers.get(scope)
    if cached is None or cached[0] is not provider:
        cached = (provider, provider.get_tracer(scope))
        _tracers[scope] = cached
    return cached[1]


def save_span(name: str) -> AbstractContextManager[Carrier | None]:
    """A producer span for the save `name`, current while the block runs; the block gets the
    carrier to put in the message (None when tracing is off)."""
    tracer = _tracer("agentstore.producer")
    return _OFF if tracer is None else _save_span(tracer, name)


@contextlib.contextmanager
def _save_span(tracer: Any, name: str) -> Iterator[Carrier | None]:
    with tracer.start_as_current_span(
        f"agentstore.{name}",
        kind=trace.SpanKind.PRODUCER,
        attributes={"messaging.system": "redis", "messaging.operation.type": "send"},
    ):
        carrier: Carrier = {}
        propagate.inject(carrier)
        yield carrier or None


def batch_span(carriers: Iterable[Carrier], **attributes: int) -> AbstractContextManager[Any]:
    """A worker span for one batch, linked to the span of each op's save; the block gets the
    span (None when tracing is off). The SDK keeps 128 links per span unless
    `OTEL_SPAN_LINK_COUNT_LIMIT` says otherwise."""
    tracer = _tracer("agentstore.worker")
    if tracer is None:
        return _OFF
    links, seen = [], set()
    for carrier in carriers:
        context = trace.get_current_span(propagate.extract(carrier)).get_span_context()
        key = (context.trace_id, context.span_id)
        if context.is_valid and key not in seen:
            seen.add(key)
            links.append(trace.Link(context))
    return tracer.start_as_current_span(  # type: ignore[no-any-return]
        "agentstore.apply_batch",
        kind=trace.SpanKind.CONSUMER,
        links=links,
        attributes={
            "messaging.system": "redis",
            "messaging.operation.type": "process",
            **{f"agentstore.{k}": v for k, v in attributes.items()},
        },
    )


def carriers_of(value: object, n: int) -> list[Carrier | None] | None:
    """The header's carriers for a message of `n` ops, or None if it has none we can use: a
    bad trace header never costs a save."""
    if not isinstance(value, list) or len(value) != n:
        return None
    for carrier in value:
        if carrier is not None and not (
            isinstance(carrier, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in carrier.items())
        ):
            return None
    return value
