"""Cosmos DB apply: partition-grouped, bounded concurrency, transactional batches that fall
back to record-by-record writes when what is stored changed under them."""

from __future__ import annotations

import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.cosmos_server import CosmosServer, CosmosServerError, start_cosmos_server
from tests.services import unavailable

pytest.importorskip("azure.cosmos")

import storage.cosmos as cosmos_module
from storage.cosmos import CosmosDBClient
from storage.ops import Op, make_op

pytestmark = pytest.mark.filterwarnings("ignore:Unverified HTTPS request:Warning")


@pytest.fixture(scope="module")
def server() -> Iterator[CosmosServer]:
    try:
        srv = start_cosmos_server()
    except CosmosServerError as exc:
        unavailable(f"cosmosdb-server (Cosmos DB batching tests NOT run): {exc}")
    yield srv
    srv.stop()


@pytest.fixture
def make_client(server: CosmosServer) -> Iterator[Callable[..., CosmosDBClient]]:
    made: list[CosmosDBClient] = []

    def make(**overrides: Any) -> CosmosDBClient:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client = CosmosDBClient(
                cosmos_endpoint=server.endpoint,
                cosmos_key=server.key,
                cosmos_database_name=f"batch-{uuid.uuid4().hex}",
                **overrides,
            )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def _states(n: int, agents: int, version: str | None = None, **extra: Any) -> list[Op]:
    return [
        make_op(
            "save_state",
            {"agent_id": f"agent-{i % agents}", "state_id": f"s{i}", "state": {"i": i, **extra}},
            version=version,
        )
        for i in range(n)
    ]


def test_writes_are_grouped_by_partition_with_bounded_concurrency(
    make_client: Callable[..., CosmosDBClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client(cosmos_max_concurrency=3)
    lock = threading.Lock()
    running = peak = 0
    partitions_per_chunk: list[set[str]] = []
    real = client._write_chunk

    def spy(container: Any, recs: list[Any]) -> Any:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            partitions_per_chunk.append({r.partition for r in recs})
        try:
            return real(container, recs)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(client, "_write_chunk", spy)
    ops = _states(300, agents=12)
    client.apply(ops)
    assert all(len(parts) == 1 for parts in partitions_per_chunk), "one partition per chunk"
    assert len(partitions_per_chunk) == 12, "25 records per partition: one batch each"
    assert 1 < peak <= 3, f"{peak} chunks ran at once; the limit is 3"
    for i in (0, 7, 299):
        assert client.get_state(f"agent-{i % 12}", f"s{i}") == {"i": i}


def test_new_records_are_created_in_one_request_per_batch(
    make_client: Callable[..., CosmosDBClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client()
    sizes: list[int] = []
    real = cosmos_module._create_batch

    def spy(container: Any, recs: list[Any]) -> Any:
        sizes.append(len(recs))
        return real(container, recs)

    monkeypatch.setattr(cosmos_module, "_create_batch", spy)
    client.apply(_states(250, agents=1))  # one partition: chunks of 100, each one batch
    assert sorted(sizes) == [50, 100, 100]
    client.apply(_states(250, agents=1, v=2))  # stored already: replaced one by one
    assert sorted(sizes) == [50, 100, 100]
    assert client.get_state("agent-0", "s249") == {"i": 249, "v": 2}
    messages = [
        make_op("save_conversation", {"conversation_id": "c", "message": {"n": n}})
        for n in range(30)
    ]
    client.apply(messages)
    assert sizes[-1] == 30
    assert client.get_conversation_history("c") == [{"n": n} for n in range(30)]


def test_a_batch_that_meets_a_concurrent_write_falls_back_and_converges(
    make_client: Callable[..., CosmosDBClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client()
    ours = _states(20, agents=1, version="000000000000002.000000.00000000", v=2)
    theirs = _states(20, agents=1, version="000000000000003.000000.00000000", v=3)
    real = cosmos_module._create_batch
    results: list[Any] = []

    def racing(container: Any, recs: list[Any]) -> Any:
        # Another writer creates newer versions of some items after our query found none:
        # our batch hits a conflict and each record then decides on its own.
        monkeypatch.setattr(cosmos_module, "_create_batch", real)
        client.apply(theirs[5:10])
        result = real(container, recs)
        results.append(result)
        return result

    monkeypatch.setattr(cosmos_module, "_create_batch", racing)
    client.apply(ours)
    assert results == [None], "the batch was refused"
    for i in range(20):
        expected = 3 if 5 <= i < 10 else 2
        assert client.get_state("agent-0", f"s{i}") == {"i": i, "v": expected}
