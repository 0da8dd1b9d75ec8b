"""Payloads that look like kombu's tagged JSON reach the store exactly as saved."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.helpers import producer
from tests.plugin import WorkerFactory
from tests.queued import op_id_of

TAGGED: list[dict[str, Any]] = [
    {"__type__": "datetime", "__value__": "2024-01-01T00:00:00"},
    {"__type__": "not a kombu type", "__value__": 1},
    {"nested": [{"__type__": "uuid", "__value__": "0e2bd3d4-4f0d-4a5e-9a53-6b0ad2b5e1a0"}]},
]


@pytest.mark.parametrize("linger_ms", [0.0, 5.0])
def test_tagged_looking_payloads_round_trip(
    broker: str, database: str, start_worker: WorkerFactory, linger_ms: float
) -> None:
    start_worker(broker, database)
    with producer(broker, database, linger_ms=linger_ms) as prod:
        ids = [op_id_of(prod.save_state("agent", f"s{n}", p)) for n, p in enumerate(TAGGED)]
        prod.wait(ids, timeout=60)
        for n, payload in enumerate(TAGGED):
            assert prod.get_state("agent", f"s{n}") == payload
