"""Reading LangGraph checkpoint rows back, and choosing the rows a prune or a run delete drops.

Everything here works on the JSON the rows hold; serialised values stay base64 text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .base import StorageBackend
from .checkpoints import blob_rid, is_part, part_rids, thread_prefix
from .records import Kind, Record

_SCAN_PAGE = 500


def whole(store: StorageBackend, kind: Kind, thread_id: str, mains: Sequence[Record]) -> list[str]:
    """The base64 text of each of `mains`, its later parts read and joined where it was split."""
    wanted = [rid for rec in mains for rid in part_rids(rec.row_id, int(rec.data.get("parts", 1)))]
    found = {rec.row_id: rec.data["data"] for rec in store.get_rows(kind, thread_id, wanted)}
    missing = [rid for rid in wanted if rid not in found]
    if missing:
        raise LookupError(f"{kind} row {missing[0]!r} is missing a part; it was never written")
    return [
        str(rec.data["data"])
        + "".join(found[rid] for rid in part_rids(rec.row_id, int(rec.data.get("parts", 1))))
        for rec in mains
    ]


def checkpoints(
    store: StorageBackend,
    thread_id: str,
    ns: str | None,
    *,
    below: str | None = None,
    limit: int | None = None,
) -> list[Record]:
    """`thread_id`'s checkpoint rows (of namespace `ns`, or all), newest first per namespace."""
    prefix = thread_prefix(thread_id) if ns is None else thread_prefix(thread_id, ns)
    return store.read_rows(
        "checkpoint", thread_id, prefix, below=below, descending=True, limit=limit
    )


def writes(store: StorageBackend, thread_id: str, ns: str, checkpoint_id: str) -> list[Record]:
    """The pending write rows of one checkpoint (main rows; parts are read by `whole`)."""
    rows = store.read_rows(
        "checkpoint_write", thread_id, thread_prefix(thread_id, ns, checkpoint_id)
    )
    return [rec for rec in rows if not is_part(rec)]


def blobs(store: StorageBackend, thread_id: str, ns: str, versions: dict[str, Any]) -> list[Record]:
    """The channel blob rows of `versions` ({channel: version}) that exist."""
    rids = [blob_rid(thread_id, ns, channel, str(v)) for channel, v in versions.items()]
    return store.get_rows("checkpoint_blob", thread_id, rids)


def all_checkpoints(store: StorageBackend) -> Iterable[Record]:
    """Every live checkpoint row of every thread, in row id order (a scan of the store)."""
    after: str | None = None
    while True:
        page = store.scan_records("checkpoint", after, _SCAN_PAGE)
        yield from (rec for rec in page if not rec.deleted)
        if len(page) < _SCAN_PAGE:
            return
        after = page[-1].row_id


def _parts(rec: Record) -> int:
    return int(rec.data.get("parts", 1))


def doomed_rows(
    store: StorageBackend, thread_id: str, checkpoint_rows: Sequence[Record], keep: Sequence[Record]
) -> dict[str, Any]:
    """The `delete_checkpoint_rows` args dropping `checkpoint_rows`, their writes, and every
    blob of their namespaces that no checkpoint in `keep` still refers to (LangGraph rebuilds
    a kept checkpoint's channels from blobs written by its ancestors: the channel chain)."""
    namespaces = {rec.data["checkpoint_ns"] for rec in checkpoint_rows}
    kept = {
        (rec.data["checkpoint_ns"], channel, str(version))
        for rec in keep
        for channel, version in rec.data.get("channel_versions", {}).items()
    }
    args: dict[str, Any] = {"thread_id": thread_id, "checkpoints": [], "blobs": [], "writes": []}
    for rec in checkpoint_rows:
        ns, cid = rec.data["checkpoint_ns"], rec.data["checkpoint_id"]
        args["checkpoints"].append((ns, cid))
        for w in writes(store, thread_id, ns, cid):
            d = w.data
            args["writes"].append((ns, cid, d["task_id"], d["idx"], _parts(w)))
    for ns in sorted(namespaces):
        rows = store.read_rows("checkpoint_blob", thread_id, thread_prefix(thread_id, ns))
        for b in rows:
            if is_part(b):
                continue
            key = (ns, b.data["channel"], b.data["version"])
            if key not in kept:
                args["blobs"].append((*key, _parts(b)))
    return args


def prune_rows(store: StorageBackend, thread_id: str, keep_per_ns: int) -> dict[str, Any] | None:
    """What keeping the newest `keep_per_ns` checkpoints of each namespace drops (None:
    nothing); 0 drops every checkpoint of the thread."""
    by_ns: dict[str, list[Record]] = {}
    for rec in checkpoints(store, thread_id, None):
        by_ns.setdefault(rec.data["checkpoint_ns"], []).append(rec)
    keep: list[Record] = []
    drop: list[Record] = []
    for rows in by_ns.values():
        rows.sort(key=lambda r: r.data["checkpoint_id"], reverse=True)
        keep += rows[:keep_per_ns]
        drop += rows[keep_per_ns:]
    return doomed_rows(store, thread_id, drop, keep) if drop else None
