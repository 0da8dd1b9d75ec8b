"""Cosmos DB specifics the shared contract cannot see: container layouts, 404s, limits, secrets.

Runs against the local test server (`cosmos-server/server.js`); each test uses its own database.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agentstore_cli.launch import CosmosServer

cosmos = pytest.importorskip("azure.cosmos")
from azure.cosmos import CosmosClient, PartitionKey, exceptions  # noqa: E402

from storage.cosmos import CosmosDBClient  # noqa: E402
from storage.errors import ConfigError, StorageError, TransientStorageError  # noqa: E402
from storage.ids import row_id  # noqa: E402
from storage.ops import make_op  # noqa: E402
from storage.payload import MAX_PAYLOAD_BYTES  # noqa: E402
from storage.records import Scope  # noqa: E402
from storage.retention import RetentionPolicy  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Unverified HTTPS request:Warning")

CONTAINERS = ("agent_states", "agent_tasks", "conversations", "transactions")
# A different, valid base64 key: the test server accepts only the emulator's key.
WRONG_KEY = base64.b64encode(b"not-the-emulator-key-" * 3).decode()
# `make_client(database=None, **settings)`: a client of the test server, closed after the test.
MakeClient = Callable[..., CosmosDBClient]


@pytest.fixture
def raw(cosmos_server: CosmosServer) -> Iterator[CosmosClient]:
    """The plain SDK client, to arrange and inspect what the backend sees."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client = CosmosClient(cosmos_server.endpoint, cosmos_server.key)
    yield client
    client.close()


@pytest.fixture
def make_client(cosmos_server: CosmosServer) -> Iterator[MakeClient]:
    made: list[CosmosDBClient] = []

    def make(database: str | None = None, **overrides: Any) -> CosmosDBClient:
        settings = {
            "cosmos_endpoint": cosmos_server.endpoint,
            "cosmos_key": cosmos_server.key,
            "cosmos_database_name": database or f"test-{uuid.uuid4().hex}",
            **overrides,
        }
        client = CosmosDBClient(**settings)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def seed_layout(raw: CosmosClient, database: str, path: str = "/id") -> None:
    db = raw.create_database(database)
    for name in CONTAINERS:
        db.create_container(name, PartitionKey(path=path))


def partition_paths(raw: CosmosClient, database: str) -> dict[str, list[str]]:
    db = raw.get_database_client(database)
    return {n: db.get_container_client(n).read()["partitionKey"]["paths"] for n in CONTAINERS}


def test_new_containers_get_partition_key_paths(raw: CosmosClient, make_client: MakeClient) -> None:
    database = f"test-{uuid.uuid4().hex}"
    make_client(database)
    assert partition_paths(raw, database) == {
        "agent_states": ["/agent_id"],
        "agent_tasks": ["/agent_id"],
        "conversations": ["/conversation_id"],
        "transactions": ["/case_id"],
    }
    # Opening it again uses the containers as they are.
    make_client(database).save_state("a", "s", {"v": 1})


@pytest.mark.parametrize("layout", ["/id", "new"])
def test_every_method_on_both_layouts(
    raw: CosmosClient, make_client: MakeClient, layout: str
) -> None:
    database = f"test-{uuid.uuid4().hex}"
    if layout == "/id":
        seed_layout(raw, database)
    client = make_client(database)
    if layout == "/id":
        assert set(map(tuple, partition_paths(raw, database).values())) == {("/id",)}

    client.save_state("agent/1", "s_1", {"step": 2}, version="0002")
    client.save_state("agent/1", "s_1", {"step": 1}, version="0001")  # older: ignored
    client.save_state("agent/1", "s_1", {"step": 9}, version="0002")  # equal: no-op
    client.save_task("agent/1", "t#1", {"status": "done"}, version="0005")
    client.save_task("agent/1", "t#1", {"status": "new"}, version="0004")
    assert client.get_state("agent/1", "s_1") == {"step": 2}
    assert client.get_task("agent/1", "t#1") == {"status": "done"}
    assert client.get_state("agent/1", "missing") is None
    assert client.get_task("nobody", "t#1") is None

    for i in range(6):
        client.save_conversation("conv?1", {"n": i}, version=f"{i:04d}")
    client.save_conversation("other", {"n": 99})
    assert client.get_conversation_history("conv?1") == [{"n": i} for i in range(6)]
    assert client.get_conversation_history("conv?1", limit=2) == [{"n": 4}, {"n": 5}]
    assert client.get_conversation_history("conv?1", limit=0) == []
    assert client.get_conversation_history("conv?1", limit=50) == [{"n": i} for i in range(6)]
    assert client.get_conversation_history("nobody") == []

    client.save_transactions("case|1", [{"id": "t1", "amount": 1}, {"id": "t2"}], version="0010")
    client.save_transactions("case|1", [{"id": "t3"}, {"id": "t1", "amount": 5}], version="0011")
    assert client.get_transactions("case|1") == [
        {"id": "t1", "amount": 5},
        {"id": "t2"},
        {"id": "t3"},
    ]
    # An older save arriving late loses on content but its earlier place wins: every delivery
    # order ends in the same state.
    client.save_transactions("case|1", [{"id": "t2", "amount": -1}], version="0009")
    assert client.get_transactions("case|1") == [
        {"id": "t2"},
        {"id": "t1", "amount": 5},
        {"id": "t3"},
    ]
    assert client.get_transactions("nobody") == []

    # A record written by the seed (no version, no data wrapper) is neither read nor scanned.
    db = raw.get_database_client(database)
    legacy = {"id": "agent1_s_1", "agent_id": "agent/1", "state_id": "s_1", "state": {}}
    db.get_container_client("agent_states").create_item(legacy)
    assert client.get_state("agent/1", "s_1") == {"step": 2}
    scanned = client.scan_records("state")
    assert [(r.row_id, r.partition, r.sub_id, r.data, r.version) for r in scanned] == [
        ("agent%2F1|s_1", "agent/1", "s_1", {"step": 2}, "000000000000002")  # stored as 15 digits
    ]
    assert client.scan_records("state", after=scanned[-1].row_id) == []
    assert len(client.scan_records("conversation", limit=4)) == 4

    # Every item carries every field, so any partition key path finds its value.
    state = next(iter(db.get_container_client("agent_states").read_all_items()))
    assert {"id", "agent_id", "state_id", "version", "position", "data"} <= state.keys()
    txn = next(iter(db.get_container_client("transactions").read_all_items()))
    assert {"id", "case_id", "transaction_id", "version", "position", "data"} <= txn.keys()


def test_missing_item_is_a_quick_404(raw: CosmosClient, make_client: MakeClient) -> None:
    database = f"test-{uuid.uuid4().hex}"
    client = make_client(database)
    client.save_state("a", "s", {"v": 1})
    started = time.perf_counter()
    for _ in range(5):
        assert client.get_state("a", "missing") is None
    assert time.perf_counter() - started < 1.0  # the server's 500 took ~0.5 s of SDK retries each
    states = raw.get_database_client(database).get_container_client("agent_states")
    with pytest.raises(exceptions.CosmosResourceNotFoundError):
        states.read_item("a|s", partition_key="wrong-agent")


def test_item_near_two_megabytes_round_trips(raw: CosmosClient, make_client: MakeClient) -> None:
    client = make_client()
    # Multi-byte characters: escaped as \\uXXXX this would be ~4 MB on the wire.
    text = "é" * ((MAX_PAYLOAD_BYTES - 20) // 2)
    payload = {"t": text}
    client.save_state("a", "big", payload)
    assert client.get_state("a", "big") == payload
    client.save_conversation("c", payload)
    assert client.get_conversation_history("c") == [payload]
    # The server enforces the real 2 MiB limit, so the round trip above proves we fit under it.
    states = raw.get_database_client(client._database_name).get_container_client("agent_states")
    with pytest.raises(exceptions.CosmosHttpResponseError) as info:
        states.create_item({"id": "x", "agent_id": "a", "data": "x" * (2 * 1024 * 1024)})
    assert info.value.status_code == 413


def test_concurrent_writers_keep_the_newest_version(make_client: MakeClient) -> None:
    database = f"test-{uuid.uuid4().hex}"
    clients = [make_client(database) for _ in range(4)]
    versions = [f"{v:04d}" for v in range(40)]

    def save(client: CosmosDBClient, mine: list[str]) -> None:
        for v in mine:
            client.save_state("a", "s", {"v": v}, version=v)
            client.save_transactions("k", [{"id": "t", "v": v}], version=v)

    threads = [
        threading.Thread(target=save, args=(c, versions[i::4][::-1])) for i, c in enumerate(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clients[0].get_state("a", "s") == {"v": "0039"}
    assert clients[0].get_transactions("k") == [{"id": "t", "v": "0039"}]


def test_apply_retried_in_any_order_converges(make_client: MakeClient) -> None:
    ops = [
        make_op("save_state", {"agent_id": "a", "state_id": "s", "state": {"v": i}}, version=v)
        for i, v in enumerate(["0003", "0001", "0002"])
    ] + [
        make_op(
            "save_transactions", {"case_id": "k", "transactions": [{"id": "t", "v": v}]}, version=v
        )
        for v in ["0007", "0005"]
    ]
    a, b = make_client(), make_client()
    a.apply(ops)
    a.apply(ops)
    for op in reversed(ops):
        b.apply([op])
    for client in (a, b):
        assert client.get_state("a", "s") == {"v": 0}
        assert client.get_transactions("k") == [{"id": "t", "v": "0007"}]


def test_key_never_shows(cosmos_server: CosmosServer, make_client: MakeClient) -> None:
    client = make_client()
    assert cosmos_server.key not in repr(client)
    assert repr(client) == (
        f"CosmosDBClient(endpoint={cosmos_server.endpoint!r}, database={client._database_name!r})"
    )
    with pytest.raises(StorageError) as info:
        make_client(cosmos_key=WRONG_KEY)
    assert "401" in str(info.value)
    for text in (str(info.value), repr(info.value), repr(info.value.__cause__)):
        assert WRONG_KEY not in text
        assert cosmos_server.key not in text


def test_unusable_partition_key_path_is_a_config_error(
    raw: CosmosClient, make_client: MakeClient
) -> None:
    database = f"test-{uuid.uuid4().hex}"
    seed_layout(raw, database, path="/tenant")
    with pytest.raises(ConfigError, match="partitioned on"):
        make_client(database)


def test_unreachable_endpoint_is_transient(make_client: MakeClient) -> None:
    with pytest.raises(TransientStorageError) as info:
        make_client(cosmos_endpoint="https://127.0.0.1:9/")
    assert "could not be reached" in str(info.value)


def test_closed_client_refuses_calls(make_client: MakeClient) -> None:
    client = make_client()
    client.close()
    client.close()
    with pytest.raises(StorageError, match="closed"):
        client.get_state("a", "s")


def test_ids_the_sdk_refuses_are_mapped_reversibly(make_client: MakeClient) -> None:
    # The Python SDK refuses item ids with tab/CR/LF or a trailing space; Cosmos DB allows them.
    client = make_client()
    owner, name = "tab\there", "line\r\nend "
    client.save_state(owner, name, {"v": 1})
    client.save_task(owner, name, {"v": 2})
    client.save_transactions("k ", [{"id": "t\n "}])
    assert client.get_state(owner, name) == {"v": 1}
    assert client.get_task(owner, name) == {"v": 2}
    assert client.get_transactions("k ") == [{"id": "t\n "}]
    assert [r.row_id for r in client.scan_records("state")] == [
        row_id(("agent_id", owner), ("state_id", name))
    ]
    assert [r.sub_id for r in client.scan_records("transaction")] == ["t\n "]


@pytest.mark.parametrize("name", ["a/b", "a#b", "trailing ", "x" * 256, ""])
def test_unusable_database_name_is_a_config_error(cosmos_server: CosmosServer, name: str) -> None:
    with pytest.raises(ConfigError, match="COSMOS_DATABASE_NAME"):
        CosmosDBClient(
            cosmos_endpoint=cosmos_server.endpoint,
            cosmos_key=cosmos_server.key,
            cosmos_database_name=name,
        )


@pytest.mark.parametrize(
    ("status", "transient"), [(429, True), (503, True), (408, True), (400, False)]
)
def test_http_errors_map_to_storage_errors(
    cosmos_server: CosmosServer,
    make_client: MakeClient,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    transient: bool,
) -> None:
    client = make_client()

    def fail(*args: Any, **kwargs: Any) -> None:
        raise exceptions.CosmosHttpResponseError(  # type: ignore[no-untyped-call]
            status_code=status, message=f"boom {cosmos_server.key}"
        )

    monkeypatch.setattr(client._containers["state"].proxy, "read_item", fail)
    with pytest.raises(StorageError) as info:
        client.get_state("a", "s")
    assert isinstance(info.value, TransientStorageError) is transient
    assert str(status) in str(info.value) and cosmos_server.key not in str(info.value)


# --- deletes, partition tombstones and retention: what the shared contract cannot see ---------


@pytest.mark.parametrize("layout", ["/id", "new"])
def test_deletes_erase_and_prune_on_both_layouts(
    raw: CosmosClient, make_client: MakeClient, layout: str
) -> None:
    database = f"test-{uuid.uuid4().hex}"
    if layout == "/id":
        seed_layout(raw, database)
    client = make_client(database)
    for n in range(3):
        client.save_state("a/1", f"s{n}", {"n": n}, version=f"000{n}")
        client.save_task("a/1", f"t{n}", {"status": "done"}, version=f"000{n}")
    client.delete_state("a/1", "s0", version="0005")
    assert client.list_states("a/1") == ["s1", "s2"]
    client.erase_agent("a/1", version="0006")
    client.save_state("a/1", "s1", {"late": True}, version="0004")  # older than the erase
    assert client.list_states("a/1") == [] and client.list_tasks("a/1") == []
    assert client.get_state("a/1", "s1") is None
    client.save_state("a/1", "s9", {"new": True}, version="0007")
    assert client.list_states("a/1") == ["s9"]

    for i in range(6):
        client.save_conversation("c#1", {"i": i}, version=f"001{i}")
    client.save_transactions("k?1", [{"id": "x"}, {"id": "y"}], version="0010")
    client.delete_transactions("k?1", ["x"], version="0011")
    assert client.get_transactions("k?1") == [{"id": "y"}]
    assert [r.deleted for r in client.scan_records("transaction")] == [True, False]
    assert client.prune(RetentionPolicy(keep_messages=2)) == {
        "conversations:over_count": 4,
        **dict.fromkeys(TOMBSTONE_CATEGORIES, 0),
    }
    assert client.get_conversation_history("c#1") == [{"i": 4}, {"i": 5}]
    client.delete_conversation("c#1", version="0020")
    client.delete_transactions("k?1", version="0020")
    assert client.get_conversation_history("c#1") == [] and client.get_transactions("k?1") == []

    # Tombstone items stay until the grace period ends; the erase's tombstone too.
    db = raw.get_database_client(database)
    tombstones = db.get_container_client("agentstore_tombstones")
    assert tombstones.read()["partitionKey"]["paths"] == ["/key"]
    assert sorted((t["id"], t["key"]) for t in tombstones.read_all_items()) == [
        ("agent", "a/1"),
        ("case", "k?1"),
        ("conversation", "c#1"),
    ]
    time.sleep(1.1)
    counts = client.prune(RetentionPolicy(tombstone_grace_s=0))
    assert counts == {
        "agent_states:tombstones": 0,  # s0's tombstone item went with the erase
        "agent_tasks:tombstones": 0,
        "transactions:tombstones": 0,  # x's went with the whole-case delete
        "checkpoints:tombstones": 0,
        "checkpoint_blobs:tombstones": 0,
        "checkpoint_writes:tombstones": 0,
        "agentstore_tombstones:expired": 3,
    }
    assert list(tombstones.read_all_items()) == []
    # The seed's own items are neither listed nor pruned.
    states = db.get_container_client("agent_states")
    states.create_item({"id": "legacy", "agent_id": "b", "state_id": "old", "deleted": True})
    assert client.list_states("b") == []
    assert client.prune(RetentionPolicy(tombstone_grace_s=0))["agent_states:tombstones"] == 0


TOMBSTONE_CATEGORIES = (
    "agent_states:tombstones",
    "agent_tasks:tombstones",
    "transactions:tombstones",
    "checkpoints:tombstones",
    "checkpoint_blobs:tombstones",
    "checkpoint_writes:tombstones",
    "agentstore_tombstones:expired",
)


def test_a_save_that_missed_a_concurrent_erase_is_taken_back(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race the second tombstone read closes: a save checks its partition (no tombstone
    # yet), an erase then stores its tombstone and deletes what it finds, and only then does
    # the save write. Replayed deterministically by erasing from inside the save's check.
    database = f"test-{uuid.uuid4().hex}"
    client, eraser = make_client(database), make_client(database)
    checks: list[str] = []
    real = client._remover.tombstone

    def check_then_erase(scope: Scope, key: str) -> str | None:
        found = real(scope, key)
        if not checks:
            eraser.erase_agent(key, version="5")
        checks.append(scope)
        return found

    monkeypatch.setattr(client._remover, "tombstone", check_then_erase)
    client.apply(
        [
            make_op("save_state", {"agent_id": "a", "state_id": "s", "state": {}}, version="4"),
            make_op("save_task", {"agent_id": "a", "task_id": "t", "task_data": {}}, version="6"),
        ]
    )
    assert eraser.get_state("a", "s") is None
    assert eraser.get_task("a", "t") == {}, "newer than the erase: kept"
    assert eraser.list_states("a") == []
    assert checks == ["agent", "agent"]  # one read per partition before, one after the writes


def test_two_pruners_at_once_keep_exactly_the_newest_n(make_client: MakeClient) -> None:
    database = f"test-{uuid.uuid4().hex}"
    clients = [make_client(database) for _ in range(3)]
    for conversation in ("a", "b", "c"):
        clients[0].apply(
            [
                make_op("save_conversation", {"conversation_id": conversation, "message": {"i": i}})
                for i in range(40)
            ]
        )
    policy = RetentionPolicy(keep_messages=7, batch_size=3)
    counts: list[int] = []
    threads = [
        threading.Thread(
            target=lambda c=c: counts.append(c.prune(policy)["conversations:over_count"])
        )
        for c in clients
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sum(counts) == 3 * 33, counts  # every message removed once, by whichever got it
    for conversation in ("a", "b", "c"):
        history = clients[0].get_conversation_history(conversation)
        assert [m["i"] for m in history] == list(range(33, 40))


def test_tombstone_container_on_another_key_is_a_config_error(
    raw: CosmosClient, make_client: MakeClient
) -> None:
    database = f"test-{uuid.uuid4().hex}"
    raw.create_database(database).create_container("agentstore_tombstones", PartitionKey("/id"))
    with pytest.raises(ConfigError, match="agentstore_tombstones"):
        make_client(database)
