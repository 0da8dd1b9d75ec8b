"""LangGraph checkpoint rows on every backend: idempotent puts, LangGraph's pending-write rule,
thread deletes, row deletes, and values split across rows up to 16 MB."""

from __future__ import annotations

import base64
import os
from typing import Any, cast

import pytest

from storage import checkpoint_prune
from storage import checkpoint_reads as reads
from storage.base import StorageBackend, StorageClient
from storage.checkpoint_ops import MAX_CHECKPOINT_BYTES
from storage.checkpoint_reads import Loaded, Wanted
from storage.checkpoints import PART_CHARS
from storage.errors import ValidationError
from storage.ids import ESCAPES
from storage.ops import Op, make_op
from storage.records import plan
from storage.retention import RetentionPolicy
from tests.contract.conftest import Backend


def _b64(raw: bytes) -> dict[str, str]:
    return {"type": "bytes", "data": base64.b64encode(raw).decode()}


def put(
    thread: str, cid: str, values: dict[str, bytes], parent: str | None = None, **kw: Any
) -> Op:
    args = {
        "thread_id": thread,
        "checkpoint_ns": kw.get("ns", ""),
        "checkpoint_id": cid,
        "parent_checkpoint_id": parent,
        "checkpoint": _b64(b"head"),
        "metadata": _b64(b"meta"),
        "channel_versions": {ch: f"v{cid}" for ch in values},
        "run_id": kw.get("run_id"),
        "blobs": [{"channel": ch, "version": f"v{cid}", **_b64(v)} for ch, v in values.items()],
    }
    return make_op("put_checkpoint", args, version=kw.get("version"))


def writes(
    thread: str, cid: str, items: list[tuple[int, bytes]], version: int | None = None, ns: str = ""
) -> Op:
    args = {
        "thread_id": thread,
        "checkpoint_ns": ns,
        "checkpoint_id": cid,
        "task_id": "task",
        "task_path": "",
        "writes": [{"idx": i, "channel": f"c{i}", **_b64(v)} for i, v in items],
    }
    return make_op("put_writes", args, version=version)


def backend(store: StorageClient) -> StorageBackend:
    return cast(StorageBackend, store)


def loaded_values(loaded: Loaded) -> dict[str, bytes]:
    return {b.data["channel"]: base64.b64decode(t) for b, t in loaded.blobs}


def loaded_writes(loaded: Loaded) -> dict[int, bytes]:
    return {w.data["idx"]: base64.b64decode(t) for w, t in loaded.writes}


def values(store: StorageBackend, thread: str, cid: str) -> dict[str, bytes]:
    (found,) = store.load_checkpoints(Wanted(thread, "", cid))
    # The store's own load (one statement on PostgreSQL) agrees with the row reads.
    assert [found] == reads.load(store, Wanted(thread, "", cid))
    return loaded_values(found)


def pending(store: StorageBackend, thread: str, cid: str) -> dict[int, bytes]:
    rows = reads.writes(store, thread, "", cid)
    texts = reads.whole(store, "checkpoint_write", thread, rows)
    found = {r.data["idx"]: base64.b64decode(t) for r, t in zip(rows, texts, strict=True)}
    for loaded in store.load_checkpoints(Wanted(thread, "", cid)):
        assert loaded_writes(loaded) == found
    return found


def test_put_reads_back_newest_first_and_a_redelivered_put_changes_nothing(
    store: StorageClient, uid: str
) -> None:
    s = backend(store)
    ops = [put(uid, f"c{n}", {"x": bytes([n])}, version=n + 1) for n in range(3)]
    s.apply(ops)
    s.apply([ops[1]])
    got = reads.checkpoints(s, uid, "")
    assert [r.data["checkpoint_id"] for r in got] == ["c2", "c1", "c0"]
    assert [r.data["checkpoint_id"] for r in reads.checkpoints(s, uid, "", limit=1)] == ["c2"]
    below = reads.checkpoints(s, uid, "", below=f"{uid}||c2")
    assert [r.data["checkpoint_id"] for r in below] == ["c1", "c0"]
    assert values(s, uid, "c1") == {"x": b"\x01"}


def test_regular_writes_keep_the_first_special_channels_overwrite(
    store: StorageClient, uid: str
) -> None:
    s = backend(store)
    s.apply([put(uid, "c", {}), writes(uid, "c", [(0, b"first"), (-1, b"error 1")], version=5)])
    s.apply([writes(uid, "c", [(0, b"second"), (-1, b"error 2")], version=6)])
    assert pending(s, uid, "c") == {0: b"first", -1: b"error 2"}


def test_delete_thread_holds_against_late_older_puts(store: StorageClient, uid: str) -> None:
    s = backend(store)
    other = f"{uid}-other"
    s.apply([put(uid, "c", {"x": b"1"}, version=1), put(other, "c", {"x": b"1"}, version=1)])
    s.apply([make_op("delete_thread", {"thread_id": uid}, version=2)])
    s.apply([put(uid, "c", {"x": b"1"}, version=1)])  # redelivered late
    assert reads.checkpoints(s, uid, None) == []
    assert len(reads.checkpoints(s, other, None)) == 1
    s.apply([put(uid, "d", {"x": b"2"}, version=3)])
    assert [r.data["checkpoint_id"] for r in reads.checkpoints(s, uid, None)] == ["d"]


def test_prune_keeps_the_newest_and_every_blob_it_refers_to(store: StorageClient, uid: str) -> None:
    s = backend(store)
    s.apply([put(uid, "c0", {"a": b"a0", "b": b"b0"})])
    # c1 changes only "a": its "b" is still the blob c0 wrote (the channel chain).
    op = put(uid, "c1", {"a": b"a1"}, parent="c0")
    args = {**op.args.model_dump(), "channel_versions": {"a": "vc1", "b": "vc0"}}
    s.apply([make_op("put_checkpoint", args), writes(uid, "c0", [(0, b"w")])])
    rows = checkpoint_prune.prune_rows(s, uid, 1)
    assert rows is not None
    s.apply([make_op("delete_checkpoint_rows", rows)])
    assert [r.data["checkpoint_id"] for r in reads.checkpoints(s, uid, None)] == ["c1"]
    assert values(s, uid, "c1") == {"a": b"a1", "b": b"b0"}
    assert pending(s, uid, "c0") == {}


def test_values_up_to_16_mb_round_trip_split_across_rows(store: StorageClient, uid: str) -> None:
    s = backend(store)
    big = os.urandom(MAX_CHECKPOINT_BYTES - 100)
    s.apply([put(uid, "c", {"big": big}), writes(uid, "c", [(0, big[: 3 * PART_CHARS])])])
    assert values(s, uid, "c") == {"big": big}
    assert pending(s, uid, "c") == {0: big[: 3 * PART_CHARS]}
    parts = s.read_rows("checkpoint_blob", uid, f"{uid}|")
    assert len(parts) > 1 and all(len(p.data["data"]) <= PART_CHARS for p in parts)


def test_a_load_finds_blobs_and_writes_whatever_characters_the_ids_hold(
    store: StorageClient, uid: str
) -> None:
    # Every character a row id escapes, in the thread, namespace, channel and version: the
    # blob row ids PostgreSQL builds from a checkpoint row must match the ones Python built.
    s, odd = backend(store), "".join(ESCAPES)
    thread = f"{uid}{odd}"
    big = os.urandom(3 * PART_CHARS)
    for ns in ("", odd):
        op = put(thread, f"c0{odd}", {odd: b"v0", "big": big}, ns=ns)
        s.apply([op, writes(thread, f"c0{odd}", [(0, b"w0"), (1, big)], ns=ns)])
        args = {**op.args.model_dump(), "checkpoint_id": "c1", "parent_checkpoint_id": f"c0{odd}"}
        args["blobs"] = [{"channel": odd, "version": "v1", **_b64(b"v1")}]
        args["channel_versions"] = {odd: "v1", "big": f"vc0{odd}", "gone": "v9"}
        s.apply([make_op("put_checkpoint", args)])

    newest = s.load_checkpoints(Wanted(thread, odd))
    assert newest == reads.load(s, Wanted(thread, odd))
    assert [n.checkpoint.data["checkpoint_id"] for n in newest] == ["c1", f"c0{odd}"]
    assert loaded_values(newest[0]) == {odd: b"v1", "big": big}  # "gone" was never stored
    assert loaded_writes(newest[0]) == {}
    assert loaded_values(newest[1]) == {odd: b"v0", "big": big}
    assert loaded_writes(newest[1]) == {0: b"w0", 1: big}

    one = Wanted(thread, odd, f"c0{odd}")
    assert s.load_checkpoints(one) == reads.load(s, one) == newest[1:]
    everywhere = s.load_checkpoints(Wanted(thread, None))
    assert [
        (n.checkpoint.data["checkpoint_ns"], n.checkpoint.data["checkpoint_id"]) for n in everywhere
    ] == [
        ("", "c1"),  # row id order: "|" (the empty namespace's end) sorts after "%"
        ("", f"c0{odd}"),
        (odd, "c1"),
        (odd, f"c0{odd}"),
    ]
    by_id = Wanted(thread, None, "c1")
    assert [n.checkpoint.row_id for n in s.load_checkpoints(by_id)] == [
        n.checkpoint.row_id for n in everywhere if n.checkpoint.data["checkpoint_id"] == "c1"
    ]
    assert s.load_checkpoints(Wanted(thread, "", limit=1)) == everywhere[:1]
    below = Wanted(thread, "", below=everywhere[0].checkpoint.row_id)
    assert s.load_checkpoints(below) == everywhere[1:2]
    assert s.load_checkpoints(Wanted(thread, "", "missing")) == []
    assert s.load_checkpoints(Wanted(f"{uid}-none", None)) == []


def test_more_than_16_mb_fails_at_the_call() -> None:
    with pytest.raises(ValidationError, match="limit is 16,000,000 bytes"):
        put("t", "c", {"big": b"x" * (MAX_CHECKPOINT_BYTES + 10)})


# --- retention: AGENTSTORE_RETAIN_CHECKPOINTS ------------------------------------------------


def chained(thread: str, cid: str, parent: str | None, versions: dict[str, str], **kw: Any) -> Op:
    """A put naming blobs of older checkpoints too (`versions`), writing only its own."""
    op = put(thread, cid, kw.pop("values", {}), parent, **kw)
    args = {**op.args.model_dump(), "channel_versions": versions, **kw.pop("extra", {})}
    return make_op("put_checkpoint", args)


def ids(store: StorageBackend, thread: str, ns: str | None = None) -> list[str]:
    return [r.data["checkpoint_id"] for r in reads.checkpoints(store, thread, ns)]


def test_retention_keeps_the_newest_n_per_namespace_with_their_blobs(backend: Backend) -> None:
    s = backend.client()
    ops: list[Op] = []
    for ns in ("", "child"):
        parent = None
        for n in range(5):
            # "a" changes every step, "b" only at c0: every checkpoint names c0's "b".
            blobs = {"a": f"a{n}".encode(), **({"b": b"b0"} if n == 0 else {})}
            versions = {"a": f"vc{n}", "b": "vc0"}
            ops.append(chained("t", f"c{n}", parent, versions, values=blobs, ns=ns))
            ops.append(writes("t", f"c{n}", [(0, f"w{n}".encode())]))
            parent = f"c{n}"
    ops.append(put("small", "c0", {"a": b"x"}))
    s.apply(ops)
    policy = RetentionPolicy(keep_checkpoints=2, batch_size=4)  # 6 to drop: two writes
    expected = {
        "checkpoints:over_count": 6,  # c0..c2 of both namespaces
        "checkpoint_blobs:over_count": 6,  # their "a" blobs; "b" stays
        "checkpoint_writes:over_count": 3,  # `writes` puts them in namespace "" only
    }
    assert {k: v for k, v in s.prune(policy, dry_run=True).items() if "checkpoint" in k} == {
        **expected,
        "checkpoints:tombstones": 0,
        "checkpoint_blobs:tombstones": 0,
        "checkpoint_writes:tombstones": 0,
    }
    assert ids(s, "t") == ["c4", "c3", "c2", "c1", "c0", "c4", "c3", "c2", "c1", "c0"]
    assert s.prune(policy) == {**s.prune(policy, dry_run=True), **expected}
    assert ids(s, "t", "") == ids(s, "t", "child") == ["c4", "c3"]
    assert ids(s, "small") == ["c0"]
    assert values(s, "t", "c3") == {"a": b"a3", "b": b"b0"}
    assert pending(s, "t", "c3") == {0: b"w3"} and pending(s, "t", "c2") == {}
    assert s.prune(policy)["checkpoints:over_count"] == 0


def test_retention_keeps_the_ancestors_a_delta_channel_is_rebuilt_from(backend: Backend) -> None:
    s = backend.client()
    ops: list[Op] = []
    parent = None
    # Two DeltaChannels, holding a value (a snapshot) only where noted; LangGraph rebuilds
    # them at c5 from the writes of its ancestors: "d" back to its snapshot at c3, "e"
    # (first written by c1's step, never snapshotted) back to c1, which has no version of it.
    for n in range(6):
        blobs = {"d": b"snapshot"} if n == 3 else {}
        versions = {"d": f"vc{n}", **({"e": f"vc{n}"} if n >= 2 else {})}
        op = chained("t", f"c{n}", parent, versions, values=blobs)
        args = op.args.model_dump()
        args["delta_channels"] = ["d", "e"]
        args["blobs"] += [
            {"channel": ch, "version": v, "type": "empty", "data": ""}
            for ch, v in versions.items()
            if ch not in blobs
        ]
        ops += [make_op("put_checkpoint", args), writes("t", f"c{n}", [(0, b"delta")])]
        parent = f"c{n}"
    s.apply(ops)
    counts = s.prune(RetentionPolicy(keep_checkpoints=1))
    assert ids(s, "t") == ["c5", "c4", "c3", "c2", "c1"]
    assert [counts[f"{kind}:over_count"] for kind in ("checkpoints", "checkpoint_writes")] == [1, 1]
    assert counts["checkpoint_blobs:over_count"] == 1  # c0's "d": no kept checkpoint names it
    assert all(pending(s, "t", f"c{n}") == {0: b"delta"} for n in range(1, 6))
    assert values(s, "t", "c3") == {"d": b"snapshot", "e": b""}


def test_prune_leaves_the_blobs_of_a_put_it_does_not_see_yet(backend: Backend) -> None:
    s = backend.client()
    c1 = chained("t", "c1", "c0", {"a": "vc1"}, values={"a": b"1"})
    s.apply([put("t", "c0", {"a": b"0"}), c1])
    # A put landing mid-prune: its blobs are stored, its checkpoint row not yet (Cosmos DB
    # writes them one by one; on PostgreSQL the prune's reads are separate statements).
    landing = chained("t", "c2", "c1", {"a": "vc2"}, values={"a": b"2"})
    s.write_records({"checkpoint_blob": plan([landing]).records["checkpoint_blob"]})
    rows = checkpoint_prune.prune_rows(s, "t", 1)
    assert rows is not None and rows["blobs"] == [("", "a", "vc0", 1)]
    s.apply([make_op("delete_checkpoint_rows", rows), landing])
    assert ids(s, "t") == ["c2", "c1"] and values(s, "t", "c2") == {"a": b"2"}


def test_prune_keeps_all_while_a_delta_channels_parent_is_not_stored_yet(
    backend: Backend,
) -> None:
    s = backend.client()

    def delta_put(cid: str, parent: str | None, value: bytes | None) -> Op:
        empty = {"type": "empty", "data": ""}
        blob = _b64(value) if value is not None else empty
        args = {**put("t", cid, {}, parent).args.model_dump(), "delta_channels": ["d"]}
        args["channel_versions"] = {"d": f"v{cid}"}
        args["blobs"] = [{"channel": "d", "version": f"v{cid}", **blob}]
        return make_op("put_checkpoint", args)

    # c0 holds d's snapshot; c1 and c2 rebuild d from writes. c2 lands before c1 (two
    # workers applying them in parallel): a prune then must not drop c0.
    c1 = delta_put("c1", "c0", None)
    s.apply([delta_put("c0", None, b"seed"), delta_put("c2", "c1", None)])
    assert checkpoint_prune.prune_rows(s, "t", 1) is None
    s.apply([c1, delta_put("c3", "c2", b"snapshot")])
    rows = checkpoint_prune.prune_rows(s, "t", 1)
    assert rows is not None and sorted(rows["checkpoints"]) == [("", "c0"), ("", "c1"), ("", "c2")]
