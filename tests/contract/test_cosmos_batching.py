"""Cosmos DB apply: partition-grouped, bounded concurrency, transactional batches that fall
back to record-by-record writes when what is stored changed under them."""

from __future__ import annotations

import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from agentstore_cli.launch import CosmosServer

pytest.importorskip("azure.cosmos")

import storage.cosmos_batch as cosmos_batch
from storage.cosmos import CosmosDBClient
from storage.ops import Op, make_op

pytestmark = pytest.mark.filterwarnings("ignore:Unverified HTTPS request:Warning")


@pytest.fixture
def make_client(cosmos_server: CosmosServer) -> Iterator[Callable[..., CosmosDBClient]]:
    made: list[CosmosDBClient] = []

    def make(**overrides: Any) -> CosmosDBClient:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client = CosmosDBClient(
                cosmos_endpoint=cosmos_server.endpoint,
                cosmos_key=cosmos_server.key,
                cosmos_database_name=f"batch-{uuid.uuid4().hex}",
                **overrides,
            )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def requests_sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`METHOD URL` of every HTTP request the SDK sends from now on (it uses `requests`)."""
    sent: list[str] = []
    real = requests.Session.send

    def send(self: requests.Session, request: requests.PreparedRequest, **kw: Any) -> Any:
        sent.append(f"{request.method} {request.url}")
        return real(self, request, **kw)

    monkeypatch.setattr(requests.Session, "send", send)
    return sent


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
    real = cosmos_batch.create_records

    def spy(container: Any, recs: list[Any]) -> Any:
        sizes.append(len(recs))
        return real(container, recs)

    monkeypatch.setattr(cosmos_batch, "create_records", spy)
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
    real = cosmos_batch.create_records
    results: list[Any] = []

    def racing(container: Any, recs: list[Any]) -> Any:
        # Another writer creates newer versions of some items after our query found none:
        # our batch hits a conflict and each record then decides on its own.
        monkeypatch.setattr(cosmos_batch, "create_records", real)
        client.apply(theirs[5:10])
        result = real(container, recs)
        results.append(result)
        return result

    monkeypatch.setattr(cosmos_batch, "create_records", racing)
    client.apply(ours)
    assert results == [None], "the batch was refused"
    for i in range(20):
        expected = 3 if 5 <= i < 10 else 2
        assert client.get_state("agent-0", f"s{i}") == {"i": i, "v": expected}


def test_a_big_delete_costs_a_request_per_100_items(
    make_client: Callable[..., CosmosDBClient], requests_sent: list[str]
) -> None:
    client = make_client()
    messages = [
        make_op("save_conversation", {"conversation_id": "big", "message": {"n": n}})
        for n in range(2_000)
    ]
    client.apply(messages)
    client.apply(_states(150, agents=1))
    requests_sent.clear()
    client.apply([make_op("delete_conversation", {"conversation_id": "big"})])
    client.apply([make_op("erase_agent", {"agent_id": "agent-0"})])
    # Was one request per item (2,150 + ~10); now one per batch of 100 plus pages and tombstones.
    assert len(requests_sent) <= 60, f"{len(requests_sent)} requests to delete 2,150 items"
    assert client.get_conversation_history("big") == []
    assert client.list_states("agent-0") == []


def test_a_batch_delete_spares_an_item_changed_since_it_was_read(
    make_client: Callable[..., CosmosDBClient],
) -> None:
    client = make_client()
    client.apply(_states(30, agents=1))
    container = client._containers["state"]
    sql = f"SELECT {container.handle} FROM c WHERE c.agent_id = @p ORDER BY c.id"
    handles = container.query(sql, {"@p": "agent-0"}, "agent-0")
    client.apply(_states(1, agents=1, v=2))  # s0 rewritten: its etag changed
    deleted = client._remover.delete_items(container, handles)
    assert deleted == 29, "all but the changed item, each counted once"
    assert client.list_states("agent-0") == ["s0"]
    assert client.get_state("agent-0", "s0") == {"i": 0, "v": 2}
