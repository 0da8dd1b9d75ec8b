"""OpenTelemetry SDKs for the tracing tests and the cost benchmarks: one recording every span
in this process, and a production-like one (a BatchSpanProcessor) whose exporter drops the
spans after counting them."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once


def _reset_global_provider() -> None:
    # The API lets a process set its provider once; opentelemetry-test-utils'
    # `reset_trace_globals` resets it the same way, so other tests run untraced again.
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


@contextmanager
def installed(provider: TracerProvider) -> Iterator[None]:
    """`provider` is the global tracer provider for the block only."""
    _reset_global_provider()
    trace.set_tracer_provider(provider)
    try:
        yield
    finally:
        _reset_global_provider()


@contextmanager
def recording(limits: SpanLimits | None = None) -> Iterator[InMemorySpanExporter]:
    """The global tracer provider records into the exporter yielded, for the block only."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        with installed(provider):
            yield exporter
    finally:
        provider.shutdown()


class CountingExporter(SpanExporter):
    """Drops the spans a collector would be sent, counting them and the links of the batch
    spans; with `directory`, writes the counts so far to <directory>/<pid>.json after each
    export (each prefork child its own file)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.spans = 0
        self.links = 0
        self._directory = directory

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        self.links += sum(len(s.links) for s in spans if s.name.startswith("agentstore.apply"))
        if self._directory is not None:
            counts = {"spans": self.spans, "links": self.links}
            written = self._directory / f".{os.getpid()}.tmp"
            written.write_text(json.dumps(counts))
            written.replace(written.with_name(f"{os.getpid()}.json"))  # read whole or not at all
        return SpanExportResult.SUCCESS


def production_like(exporter: SpanExporter) -> TracerProvider:
    """A provider as production configures one: a BatchSpanProcessor (its defaults, or the
    `OTEL_BSP_*` variables) in front of `exporter`, every span sampled."""
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def counted(directory: Path) -> tuple[int, int]:
    """The spans and links the `CountingExporter`s of other processes wrote to `directory`."""
    spans = links = 0
    for path in directory.glob("*.json"):
        counts = json.loads(path.read_text())
        spans += counts["spans"]
        links += counts["links"]
    return spans, links


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]
