"""The behaviour every StorageClient must have, run against each real backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any

import pytest

from storage import StorageClient, StorageError, ValidationError
from storage.ops import make_op
from storage.payload import MAX_DEPTH, MAX_PAYLOAD_BYTES
from storage.versions import new_version
from tests.contract.conftest import Backend

INJECTION = "'; DROP TABLE agent_states; --"


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": True}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


# --- round trips -------------------------------------------------------------------------


def test_state_round_trip_and_missing(store: StorageClient, uid: str) -> None:
    assert store.get_state(uid, "s") is None
    store.save_state(uid, "s", {"step": 1, "notes": ["a", "b"], "ok": True, "none": None})
    assert store.get_state(uid, "s") == {"step": 1, "notes": ["a", "b"], "ok": True, "none": None}
    assert store.get_state(uid, "other") is None
    assert store.get_state(f"{uid}x", "s") is None


def test_task_round_trip_and_missing(store: StorageClient, uid: str) -> None:
    assert store.get_task(uid, "t") is None
    store.save_task(uid, "t", {"status": "running", "progress": 0.5})
    assert store.get_task(uid, "t") == {"status": "running", "progress": 0.5}
    assert store.get_state(uid, "t") is None, "tasks and states are separate"


def test_conversation_round_trip_and_missing(store: StorageClient, uid: str) -> None:
    assert store.get_conversation_history(uid) == []
    store.save_conversation(uid, {"role": "user", "content": "hi"})
    store.save_conversation(uid, {"role": "assistant", "content": "hello"})
    assert store.get_conversation_history(uid) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]


def test_transactions_round_trip_and_missing(store: StorageClient, uid: str) -> None:
    assert store.get_transactions(uid) == []
    store.save_transactions(uid, [{"id": "t1", "amount": 10}, {"id": "t2", "amount": -3.5}])
    assert store.get_transactions(uid) == [
        {"id": "t1", "amount": 10},
        {"id": "t2", "amount": -3.5},
    ]


def test_empty_transactions_list_writes_nothing(store: StorageClient, uid: str) -> None:
    store.save_transactions(uid, [])
    assert store.get_transactions(uid) == []


def test_overwrite_keeps_only_newest(store: StorageClient, uid: str) -> None:
    store.save_state(uid, "s", {"v": 1})
    store.save_state(uid, "s", {"v": 2})
    store.save_task(uid, "t", {"v": 1})
    store.save_task(uid, "t", {"v": 2})
    assert store.get_state(uid, "s") == {"v": 2}
    assert store.get_task(uid, "t") == {"v": 2}


def test_get_returns_exactly_the_saved_dict(store: StorageClient, uid: str) -> None:
    payload = {"id": "mine", "version": "user field", "data": {"agent_id": "x"}}
    store.save_state(uid, "s", payload)
    assert store.get_state(uid, "s") == payload


def test_saved_and_read_dicts_are_copies(store: StorageClient, uid: str) -> None:
    def payload() -> dict[str, Any]:
        return {"items": [1, {"deep": True}], "nested": {"x": 1}}

    saved = payload()
    store.save_state(uid, "s", saved)
    store.save_conversation(uid, saved)
    store.save_transactions(uid, [{"id": "t", **saved}])
    saved["nested"]["x"] = 2
    saved["items"][1]["deep"] = False
    for read in (store.get_state(uid, "s"), *store.get_conversation_history(uid)):
        assert read == payload(), "a change to the saved dict must not reach the store"
        assert read is not None
        read["nested"]["x"] = 3
        read["items"].append("more")
    assert store.get_state(uid, "s") == payload(), "a change to a read dict neither"
    assert store.get_conversation_history(uid) == [payload()]
    txn = store.get_transactions(uid)[0]
    txn["nested"]["x"] = 4
    assert store.get_transactions(uid) == [{"id": "t", **payload()}]


# --- identities ---------------------------------------------------------------------------

INJECTIVITY_PAIRS = [
    (("a_b", "c"), ("a", "b_c")),
    (("a|b", "c"), ("a", "b|c")),
    (("a%7Cb", "c"), ("a|b", "c")),
    (("a/b", "c"), ("a", "b/c")),
    (("a\\b?", "#c"), ("a\\", "b?#c")),
    (("a%", "2F"), ("a/", "")),
]


@pytest.mark.parametrize(("left", "right"), INJECTIVITY_PAIRS[:-1])
def test_ids_never_collide(
    store: StorageClient, uid: str, left: tuple[str, str], right: tuple[str, str]
) -> None:
    store.save_state(uid + left[0], left[1], {"who": "left"})
    store.save_state(uid + right[0], right[1], {"who": "right"})
    store.save_task(uid + left[0], left[1], {"who": "left"})
    store.save_task(uid + right[0], right[1], {"who": "right"})
    assert store.get_state(uid + left[0], left[1]) == {"who": "left"}
    assert store.get_state(uid + right[0], right[1]) == {"who": "right"}
    assert store.get_task(uid + left[0], left[1]) == {"who": "left"}
    assert store.get_task(uid + right[0], right[1]) == {"who": "right"}


def test_transaction_ids_are_scoped_to_their_case(store: StorageClient, uid: str) -> None:
    store.save_transactions(f"{uid}_a", [{"id": "b_t", "n": 1}])
    store.save_transactions(f"{uid}", [{"id": "a_b_t", "n": 2}])
    assert store.get_transactions(f"{uid}_a") == [{"id": "b_t", "n": 1}]
    assert store.get_transactions(uid) == [{"id": "a_b_t", "n": 2}]


UNICODE_IDS = ["агент", "代理人", "🤖🧠", "é\u0301", "tab\tnew\nline", " spaced ", "'\"`;"]


@pytest.mark.parametrize("ident", UNICODE_IDS)
def test_unicode_ids_and_payloads(store: StorageClient, uid: str, ident: str) -> None:
    payload = {"текст": "你好 🌍", ident: [ident, {"emoji": "👍🏽"}], "rtl": "שלום"}
    store.save_state(uid + ident, ident, payload)
    store.save_task(uid + ident, ident, payload)
    store.save_conversation(uid + ident, payload)
    store.save_transactions(uid + ident, [{"id": ident, **payload}])
    assert store.get_state(uid + ident, ident) == payload
    assert store.get_task(uid + ident, ident) == payload
    assert store.get_conversation_history(uid + ident) == [payload]
    assert store.get_transactions(uid + ident) == [{"id": ident, **payload}]


def test_sql_injection_strings_round_trip(store: StorageClient, uid: str) -> None:
    evil = [
        INJECTION,
        "1' OR '1'='1",
        "$$; SELECT pg_sleep(10); $$",
        "\\x27; --",
        "SELECT * FROM c",
    ]
    for text in evil:
        payload = {text: text, "nested": {text: [text]}}
        store.save_state(uid + text, text, payload)
        store.save_conversation(uid + text, payload)
        store.save_transactions(uid + text, [{"id": text, text: text}])
        assert store.get_state(uid + text, text) == payload
        assert store.get_conversation_history(uid + text) == [payload]
        assert store.get_transactions(uid + text) == [{"id": text, text: text}]
    assert store.get_state(uid, "still-works") is None


# --- payload sizes and shapes ---------------------------------------------------------------


def test_nested_payload_at_the_depth_limit(store: StorageClient, uid: str) -> None:
    deep = nested(MAX_DEPTH)
    store.save_state(uid, "deep", deep)
    assert store.get_state(uid, "deep") == deep


def test_near_limit_payload_round_trips(store: StorageClient, uid: str) -> None:
    filler = MAX_PAYLOAD_BYTES - 1_000
    big = {"blob": "x" * filler, "tail": "é" * 200}
    assert len(json.dumps(big, ensure_ascii=False).encode()) > MAX_PAYLOAD_BYTES - 1_000
    store.save_state(uid, "big", big)
    assert store.get_state(uid, "big") == big
    store.save_transactions(uid, [{"id": "big", **big}])
    assert store.get_transactions(uid) == [{"id": "big", **big}]


def test_numbers_and_literals_round_trip(store: StorageClient, uid: str) -> None:
    payload = {
        "ints": [0, -1, 2**53 - 1, -(2**53 - 1)],
        "floats": [0.1, -2.5, 1e-7, 123456.789],
        "bools": [True, False],
        "null": None,
        "empty": {"list": [], "dict": {}, "str": ""},
    }
    store.save_state(uid, "n", payload)
    assert store.get_state(uid, "n") == payload


# --- history and transaction order ----------------------------------------------------------


def test_history_of_1000_messages_in_order_with_limit(store: StorageClient, uid: str) -> None:
    ops = [
        make_op("save_conversation", {"conversation_id": uid, "message": {"i": i}})
        for i in range(1000)
    ]
    for start in range(0, 1000, 250):
        store.apply(ops[start : start + 250])
    history = store.get_conversation_history(uid)
    assert [m["i"] for m in history] == list(range(1000))
    assert [m["i"] for m in store.get_conversation_history(uid, limit=10)] == list(range(990, 1000))
    assert store.get_conversation_history(uid, limit=0) == []
    assert len(store.get_conversation_history(uid, limit=5000)) == 1000


def test_history_is_in_version_order_whatever_the_apply_order(
    store: StorageClient, uid: str
) -> None:
    ops = [
        make_op("save_conversation", {"conversation_id": uid, "message": {"i": i}})
        for i in range(20)
    ]
    for op in reversed(ops):
        store.apply([op])
    store.apply(ops[5:10])  # redelivery: no duplicates
    assert [m["i"] for m in store.get_conversation_history(uid)] == list(range(20))


def test_transaction_identity_and_order(store: StorageClient, uid: str) -> None:
    store.save_transactions(uid, [{"id": "t1", "n": 1}, {"no_id": True}, {"id": "t2", "n": 2}])
    store.save_transactions(uid, [{"id": "t3", "n": 3}, {"id": "t1", "n": 10}])
    got = store.get_transactions(uid)
    assert [t.get("n") for t in got] == [10, None, 2, 3], "t1 updated in place, not duplicated"
    assigned = got[1]
    assert assigned["no_id"] is True and isinstance(assigned["id"], str) and assigned["id"]
    store.save_transactions(uid, [{"id": assigned["id"], "no_id": False}])
    got = store.get_transactions(uid)
    assert len(got) == 4 and got[1] == {"id": assigned["id"], "no_id": False}


def test_redelivered_transactions_op_assigns_the_same_ids(store: StorageClient, uid: str) -> None:
    op = make_op("save_transactions", {"case_id": uid, "transactions": [{"a": 1}, {"b": 2}]})
    store.apply([op])
    store.apply([op])
    again = make_op("save_transactions", op.args.model_dump(), op_id=op.id, version=op.version)
    store.apply([again])
    got = store.get_transactions(uid)
    assert len(got) == 2 and got[0]["a"] == 1 and got[1]["b"] == 2


# --- versions: idempotent and order-independent -------------------------------------------------


def test_older_version_is_ignored(store: StorageClient, uid: str) -> None:
    older, newer = new_version(), new_version()
    store.save_state(uid, "s", {"v": "new"}, version=newer)
    store.save_state(uid, "s", {"v": "old"}, version=older)
    store.save_task(uid, "t", {"v": "new"}, version=newer)
    store.save_task(uid, "t", {"v": "old"}, version=older)
    store.save_transactions(uid, [{"id": "x", "v": "new"}], version=newer)
    store.save_transactions(uid, [{"id": "x", "v": "old"}], version=older)
    assert store.get_state(uid, "s") == {"v": "new"}
    assert store.get_task(uid, "t") == {"v": "new"}
    assert store.get_transactions(uid) == [{"id": "x", "v": "new"}]


def test_same_save_twice_is_a_no_op(store: StorageClient, uid: str) -> None:
    ops = [
        make_op("save_state", {"agent_id": uid, "state_id": "s", "state": {"v": 1}}),
        make_op("save_task", {"agent_id": uid, "task_id": "t", "task_data": {"v": 1}}),
        make_op("save_conversation", {"conversation_id": uid, "message": {"v": 1}}),
        make_op("save_transactions", {"case_id": uid, "transactions": [{"v": 1}]}),
    ]
    for op in ops:
        store.apply([op])
        store.apply([op])
    store.apply(ops)
    store.apply(ops + ops)
    assert store.get_state(uid, "s") == {"v": 1}
    assert store.get_task(uid, "t") == {"v": 1}
    assert store.get_conversation_history(uid) == [{"v": 1}]
    assert len(store.get_transactions(uid)) == 1


def test_batch_dedupes_newest_version_per_key(store: StorageClient, uid: str) -> None:
    versions = [new_version() for _ in range(5)]
    ops = [
        make_op("save_state", {"agent_id": uid, "state_id": "s", "state": {"v": i}}, version=v)
        for i, v in enumerate(versions)
    ]
    store.apply([*reversed(ops), ops[1]])
    assert store.get_state(uid, "s") == {"v": 4}
    store.apply(ops[:3])
    assert store.get_state(uid, "s") == {"v": 4}


def test_batch_of_mixed_kinds(store: StorageClient, uid: str) -> None:
    ops = [
        make_op("save_state", {"agent_id": uid, "state_id": "s", "state": {"k": "s"}}),
        make_op("save_conversation", {"conversation_id": uid, "message": {"k": 1}}),
        make_op("save_task", {"agent_id": uid, "task_id": "t", "task_data": {"k": "t"}}),
        make_op("save_conversation", {"conversation_id": uid, "message": {"k": 2}}),
        make_op("save_transactions", {"case_id": uid, "transactions": [{"id": "a"}, {"id": "b"}]}),
    ]
    store.apply(ops)
    assert store.get_state(uid, "s") == {"k": "s"}
    assert store.get_task(uid, "t") == {"k": "t"}
    assert store.get_conversation_history(uid) == [{"k": 1}, {"k": 2}]
    assert store.get_transactions(uid) == [{"id": "a"}, {"id": "b"}]


def test_concurrent_saves_end_at_the_newest_version(store: StorageClient, uid: str) -> None:
    threads, per_thread = 8, 500
    newest: dict[str, tuple[str, int]] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(thread_no: int) -> None:
        try:
            for i in range(per_thread):
                key = "shared" if i % 2 == 0 else f"own-{thread_no}"
                version = new_version()
                value = thread_no * per_thread + i
                store.save_state(uid, key, {"value": value}, version=version)
                with lock:
                    if key not in newest or newest[key][0] < version:
                        newest[key] = (version, value)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=240)
    assert not errors, errors[:3]
    assert len(newest) == threads + 1
    for key, (_, value) in newest.items():
        assert store.get_state(uid, key) == {"value": value}, key


# --- bad input: a clear error at the call, nothing written ----------------------------------------


class Opaque:
    pass


BAD_IDS: list[Any] = ["", None, 42, b"bytes", "x" * 256, "nul\x00inside", "\ud800"]
BAD_PAYLOADS: list[Any] = [
    None,
    [1, 2],
    "text",
    {"set": {1, 2}},
    {"bytes": b"x"},
    {"object": Opaque()},
    {"nan": float("nan")},
    {"inf": float("inf")},
    {"nul": "a\x00b"},
    {"nul\x00key": 1},
    {"tuple": (1, 2)},
    {1: "int key"},
    {"surrogate": "\udc00"},
    {"huge": 2**64},
    {"big": "x" * (MAX_PAYLOAD_BYTES + 1)},
    nested(MAX_DEPTH + 1),
]


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_bad_ids_rejected_and_nothing_written(store: StorageClient, uid: str, bad: Any) -> None:
    with pytest.raises(ValidationError):
        store.save_state(bad, "s", {"x": 1})
    with pytest.raises(ValidationError):
        store.save_state(uid, bad, {"x": 1})
    with pytest.raises(ValidationError):
        store.save_task(uid, bad, {"x": 1})
    with pytest.raises(ValidationError):
        store.save_conversation(bad, {"x": 1})
    with pytest.raises(ValidationError):
        store.save_transactions(bad, [{"x": 1}])
    with pytest.raises(ValidationError):
        store.save_transactions(uid, [{"id": "ok"}, {"id": bad}])
    with pytest.raises(ValidationError):
        store.get_state(uid, bad)
    with pytest.raises(ValidationError):
        store.get_conversation_history(bad)
    assert store.get_transactions(uid) == []


@pytest.mark.parametrize("bad", BAD_PAYLOADS, ids=lambda b: repr(b)[:40])
def test_bad_payloads_rejected_and_nothing_written(
    store: StorageClient, uid: str, bad: Any
) -> None:
    with pytest.raises(ValidationError):
        store.save_state(uid, "s", bad)
    with pytest.raises(ValidationError):
        store.save_task(uid, "t", bad)
    with pytest.raises(ValidationError):
        store.save_conversation(uid, bad)
    with pytest.raises(ValidationError):
        store.save_transactions(uid, [{"id": "fine"}, bad])
    assert store.get_state(uid, "s") is None
    assert store.get_task(uid, "t") is None
    assert store.get_conversation_history(uid) == []
    assert store.get_transactions(uid) == [], "a bad item leaves the whole save unwritten"


def test_error_messages_name_the_problem(store: StorageClient, uid: str) -> None:
    with pytest.raises(ValidationError, match="agent_id must not be empty"):
        store.save_state("", "s", {})
    with pytest.raises(ValidationError, match="state_id is 300 characters long; the limit is 255"):
        store.save_state(uid, "x" * 300, {})
    with pytest.raises(ValidationError, match="agent_id \\+ state_id too long together"):
        store.save_state("/" * 200, "s" * 200, {})
    with pytest.raises(ValidationError, match="bytes as stored JSON; the limit is 2,000,000"):
        store.save_state(uid, "s", {"big": "x" * (MAX_PAYLOAD_BYTES + 1)})
    with pytest.raises(ValidationError, match="NUL"):
        store.save_conversation(uid, {"text": "a\x00"})
    with pytest.raises(ValidationError, match="must be a dict"):
        store.save_task(uid, "t", ["not", "a", "dict"])  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [-1, 1.5, "10", True])
def test_bad_limit_rejected(store: StorageClient, uid: str, limit: Any) -> None:
    with pytest.raises(ValidationError, match="limit"):
        store.get_conversation_history(uid, limit=limit)


@pytest.mark.parametrize("version", ["", "has space", "x" * 65, 12.0, "ünïcode"])
def test_bad_version_rejected(store: StorageClient, uid: str, version: Any) -> None:
    with pytest.raises(ValidationError, match="version"):
        store.save_state(uid, "s", {"x": 1}, version=version)
    assert store.get_state(uid, "s") is None


# --- start-up ---------------------------------------------------------------------------------

_STARTUP = """
from storage import create_storage_client
with create_storage_client() as client:
    client.save_state("boot", "p{n}", {{"n": {n}}})
    print(client.get_state("boot", "p{n}")["n"])
"""


def test_three_processes_start_at_once_on_an_empty_store(backend: Backend) -> None:
    env = {**os.environ, **backend.fresh_env()}
    if backend.name == "cosmos":
        env.pop("POSTGRES_CONNECTION_STRING", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _STARTUP.format(n=n)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for n, (proc, (out, err)) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, err[-2000:]
        assert out.strip() == str(n)
    if backend.name == "memory":
        return  # each process had a store of its own: there is nothing shared to read back
    with backend.client(
        env={k: v for k, v in env.items() if k.startswith(("POSTGRES_", "COSMOS_"))}
    ) as client:
        assert [client.get_state("boot", f"p{n}") for n in range(3)] == [{"n": n} for n in range(3)]


def test_context_manager_closes(backend: Backend) -> None:
    with backend.client() as client:
        client.save_state("cm", "s", {"x": 1})
    with pytest.raises(StorageError, match="closed"):
        client.get_state("cm", "s")


# --- scan and write: the primitives export, import and migration stand on -----------------------


def test_scan_and_write_records_copy_a_store_exactly(backend: Backend) -> None:
    from storage.records import KINDS, dedupe

    source, target = backend.client(), backend.client()
    for n in range(7):
        source.save_state(f"a{n % 3}", f"s{n}", {"n": n})
        source.save_task(f"a{n % 3}", f"t{n}", {"n": n})
        source.save_conversation(f"c{n % 2}", {"n": n})
    source.save_transactions("k", [{"id": "x", "n": 1}, {"n": 2}, {"id": "y", "n": 3}])
    source.save_transactions("k", [{"id": "x", "n": 4}])
    total = 0
    for kind in KINDS:
        after = None
        while page := source.scan_records(kind, after=after, limit=3):
            assert [r.row_id for r in page] == sorted(r.row_id for r in page)
            assert after is None or page[0].row_id > after
            target.write_records(dedupe(page))
            total += len(page)
            after = page[-1].row_id
    assert total == 7 + 7 + 7 + 3
    for n in range(7):
        assert target.get_state(f"a{n % 3}", f"s{n}") == {"n": n}
        assert target.get_task(f"a{n % 3}", f"t{n}") == {"n": n}
    for c in ("c0", "c1"):
        assert target.get_conversation_history(c) == source.get_conversation_history(c)
    assert target.get_transactions("k") == source.get_transactions("k")
    assert [t["n"] for t in target.get_transactions("k")] == [4, 2, 3]
    # Copying again changes nothing: versions travel with the records.
    for kind in KINDS:
        target.write_records(dedupe(source.scan_records(kind, limit=100)))
    assert target.get_transactions("k") == source.get_transactions("k")
    assert len(target.get_conversation_history("c0")) == 4
