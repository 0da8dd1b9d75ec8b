"""Imported at start-up by a worker whose PYTHONPATH begins with this directory (as
`opentelemetry-instrument` does with its own sitecustomize): installs an SDK tracer provider
that writes each finished span as a JSON line to AGENTSTORE_TEST_SPANS_DIR/<pid>.jsonl or,
with AGENTSTORE_TEST_SPAN_COUNTS_DIR (the cost benchmark), a production-like one that drops
its spans after counting them (`tests.tracing.CountingExporter`).

Test-only: the worker's code uses the OpenTelemetry API and never configures a provider.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


class JsonLinesExporter(SpanExporter):
    """One file per process: the prefork pool's children write their own."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self._directory / f"{os.getpid()}.jsonl", "a") as out:
            for span in spans:
                context = span.get_span_context()
                assert context is not None  # a finished SDK span always has one
                record = {
                    "name": span.name,
                    "trace_id": f"{context.trace_id:032x}",
                    "span_id": f"{context.span_id:016x}",
                    "parent": None if span.parent is None else f"{span.parent.span_id:016x}",
                    "links": [
                        {
                            "trace_id": f"{link.context.trace_id:032x}",
                            "span_id": f"{link.context.span_id:016x}",
                        }
                        for link in span.links
                    ],
                    "attributes": dict(span.attributes or {}),
                }
                out.write(json.dumps(record) + "\n")
        return SpanExportResult.SUCCESS


_directory = os.environ.get("AGENTSTORE_TEST_SPANS_DIR")
_counts = os.environ.get("AGENTSTORE_TEST_SPAN_COUNTS_DIR")
if _directory:
    _provider = TracerProvider()
    _provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(Path(_directory))))
    trace.set_tracer_provider(_provider)
elif _counts:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: `tests`
    from tests.tracing import CountingExporter, production_like

    trace.set_tracer_provider(production_like(CountingExporter(Path(_counts))))
