"""Traces across the process boundary: saves traced in this process, applied by a real
worker whose tracer provider writes its spans to files (tests/otel_site/sitecustomize.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from storage import PostgreSQLClient
from tests.integration.helpers import producer
from tests.plugin import WorkerFactory
from tests.tracing import named, recording

SITE = Path(__file__).resolve().parents[1] / "otel_site"


def _worker_spans(directory: Path, want_links: int, timeout: float = 60) -> list[dict[str, Any]]:
    """The batch spans the worker's processes wrote, once they link `want_links` saves."""
    deadline = time.monotonic() + timeout
    while True:
        spans = [
            json.loads(line)
            for path in directory.glob("*.jsonl")
            for line in path.read_text().splitlines()
        ]
        batches = [span for span in spans if span["name"] == "agentstore.apply_batch"]
        if sum(len(span["links"]) for span in batches) >= want_links:
            return batches
        assert time.monotonic() < deadline, f"worker spans so far: {spans}"
        time.sleep(0.1)


def test_each_save_and_the_batch_that_applied_it_are_linked_across_processes(
    broker: str, database: str, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    PostgreSQLClient(postgres_connection_string=database).close()  # creates the schema
    spans_dir = tmp_path / "spans"
    spans_dir.mkdir()
    path = os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH")]))
    start_worker(broker, database, PYTHONPATH=path, AGENTSTORE_TEST_SPANS_DIR=str(spans_dir))
    with recording() as exporter, producer(broker, database) as prod:
        for i in range(3):
            prod.save_state("agent", f"s{i}", {"i": i})
        prod.wait(timeout=60)
        saves = named(exporter.get_finished_spans(), "agentstore.save_state")
    assert len(saves) == 3
    batches = _worker_spans(spans_dir, want_links=3)
    linked = {(link["trace_id"], link["span_id"]) for span in batches for link in span["links"]}
    assert linked == {(f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}") for s in saves}
    # A batch has many saves, so it links to them and is never made one save's child.
    assert all(span["parent"] is None for span in batches)
