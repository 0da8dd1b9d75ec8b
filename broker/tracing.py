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
import os
import re
from collections.abc import Iterable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.environment_variables import OTEL_PYTHON_TRACER_PROVIDER
    from opentelemetry.trace.status import Status, StatusCode
except ImportError:  # the `otel` extra is not installed: tracing stays off
    trace = None  # type: ignore[assignment]

HEADER = "agentstore_traces"
Carrier = dict[str, str]

_OFF: AbstractContextManager[Any] = contextlib.nullcontext()
# The provider last seen, and per scope its tracer (None: no provider) and the most links
# its spans keep (None: no limit).
_tracers: dict[str, tuple[object, Any, int | None]] = {}
# The API keeps the global provider in `trace._TRACER_PROVIDER` (None until one is set):
# reading it is one attribute load, where `get_tracer_provider()` looks up an environment
# variable on every call while none is set (~0.7 µs, 1 % of a durable publish). When that
# variable names a provider, the API loads it on first use: the public call does that.
# tests/unit/test_tracing.py checks the attribute still follows `set_tracer_provider`.
_FAST = (
    trace is not None
    and hasattr(trace, "_TRACER_PROVIDER")
    and OTEL_PYTHON_TRACER_PROVIDER not in os.environ
)
# A W3C traceparent alone (what the default propagator injects for a sampled or unsampled
# span), read without building a Context per op: ~1.8 µs per link made, against ~5 µs
# for `propagate.extract` and the link (tests/unit/test_tracing.py checks the fallback).
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_FLAGS = {} if trace is None else {f"{i:02x}": trace.TraceFlags(i) for i in range(256)}
_SEND = {"messaging.system": "redis", "messaging.operation.type": "send"}
_PROCESS = {"messaging.system": "redis", "messaging.operation.type": "process"}
_DEFAULT_MAX_LINKS = 128  # the SDK's, when its tracer does not say


def _tracer(scope: str) -> tuple[Any, int | None]:
    """The configured provider's tracer (None while there is none: the API's proxy) and
    the most links a span of it keeps."""
    if _FAST:
        provider = trace._TRACER_PROVIDER
        if provider is None:
            return None, None
    elif trace is None:
        return None, None
    else:
        provider = trace.get_tracer_provider()
    cached = _tracers.get(scope)
    if cached is None or cached[0] is not provider:
        tracer = None
        if not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            tracer = provider.get_tracer(scope)
        limits = getattr(tracer, "_span_limits", None)  # the SDK's; other tracers: default
        most = getattr(limits, "max_links", _DEFAULT_MAX_LINKS) if limits else _DEFAULT_MAX_LINKS
        cached = _tracers[scope] = (provider, tracer, most)
    return cached[1], cached[2]


def save_span(name: str) -> AbstractContextManager[Carrier | None]:
    """A producer span for the save `name`, current while the block runs; the block gets the
    carrier to put in the message (None when tracing is off)."""
    tracer = _tracer("agentstore.producer")[0]
    if tracer is None:
        return _OFF
    return _SaveSpan(
        tracer.start_span(f"agentstore.{name}", kind=trace.SpanKind.PRODUCER, attributes=_SEND)
    )


class _Current:
    """`span` current while the block runs and ended after it, the block's exception
    recorded: what `start_as_current_span` does, without its two generator-based context
    managers."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Any) -> None:
        self._span = span

    def __enter__(self) -> Any:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        otel_context.detach(self._token)
        if kind is not None and exc is not None and span.is_recording():
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{kind.__name__}: {exc}"))
        span.end()


class _SaveSpan(_Current):
    __slots__ = ()

    def __enter__(self) -> Carrier | None:
        super().__enter__()
        carrier: Carrier = {}
        propagate.inject(carrier)
        return carrier or None


class _BatchSpan(_Current):
    """The batch span; on leaving, the links it could not keep go, `max_links` at a time,
    on child spans of their own, so every applied op stays linked."""

    __slots__ = ("_more", "_tracer")

    def __init__(self, tracer: Any, span: Any, more: list[list[Any]]) -> None:
        super().__init__(span)
        self._tracer = tracer
        self._more = more

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for links in self._more:
            self._tracer.start_span(
                "agentstore.apply_batch.links",
                kind=trace.SpanKind.CONSUMER,
                links=links,
                attributes={"agentstore.links": len(links)},
            ).end()
        super().__exit__(kind, exc, tb)


def batch_span(carriers: Iterable[Carrier], **attributes: int) -> AbstractContextManager[Any]:
    """A worker span for one batch, linked to the span of each op's save; the block gets the
    span (None when tracing is off). A span keeps `max_links` links (the SDK's 128 unless
    `OTEL_SPAN_LINK_COUNT_LIMIT` or the provider's `SpanLimits` say otherwise): the rest
    go, as many at a time, on child spans `agentstore.apply_batch.links`, made as the batch
    span ends. No link is made that the SDK would drop."""
    tracer, most = _tracer("agentstore.worker")
    if tracer is None:
        return _OFF
    links = _links(carriers)
    step = most if most and most > 0 else max(len(links), 1)
    chunks = [links[i : i + step] for i in range(0, len(links), step)] or [[]]
    span = tracer.start_span(
        "agentstore.apply_batch",
        kind=trace.SpanKind.CONSUMER,
        links=chunks[0],
        attributes={**_PROCESS, **{f"agentstore.{k}": v for k, v in attributes.items()}},
    )
    return _BatchSpan(tracer, span, chunks[1:])


def _links(carriers: Iterable[Carrier]) -> list[Any]:
    """A link to each distinct valid span context the carriers hold, in order."""
    links: list[Any] = []
    seen: set[tuple[int, int]] = set()
    link, span_context = trace.Link, trace.SpanContext
    for carrier in carriers:
        parent = carrier.get("traceparent")
        found = _TRACEPARENT.fullmatch(parent) if parent and len(carrier) == 1 else None
        if found is not None:
            key = int(found[1], 16), int(found[2], 16)
            context = span_context(key[0], key[1], True, _FLAGS[found[3]])
        else:  # tracestate, baggage, another propagator: what the configured one reads
            context = trace.get_current_span(propagate.extract(carrier)).get_span_context()
            key = context.trace_id, context.span_id
        if context.is_valid and key not in seen:
            seen.add(key)
            links.append(link(context))
    return links


def carriers_of(value: object, n: int) -> list[Carrier | None] | None:
    """The header's carriers for a message of `n` ops, or None if it has none we can use: a
    bad trace header never costs a save."""
    if type(value) is not list or len(value) != n:
        return None
    for carrier in value:
        if carrier is None:
            continue
        if type(carrier) is not dict:
            return None
        for k, v in carrier.items():
            if type(k) is not str or type(v) is not str:
                return None
    return value
