"""Choosing the LangGraph checkpoint rows a prune, a retention round or a run delete drops.

One implementation for all of them: `AgentStoreSaver.prune` / `delete_for_runs` publish the
`delete_checkpoint_rows` op these functions build, and the retention job
(`AGENTSTORE_RETAIN_CHECKPOINTS`) applies the same op to the store itself.

A kept checkpoint must still load as LangGraph saved it:

- its channel values are the blobs its `channel_versions` name, and a channel not updated
  for a while names a blob an older checkpoint wrote (the channel chain): such blobs stay;
- a `DeltaChannel` stores a value only every `snapshot_frequency` updates; in between,
  LangGraph rebuilds it from the pending writes of the checkpoint's ancestors, walking the
  parent chain back to the nearest one holding a value (`get_delta_channel_history`). Those
  ancestors, with their writes, stay too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .checkpoint_reads import all_checkpoints, checkpoints, writes
from .checkpoints import blob_rid
from .ops import make_op
from .records import Kind, Record
from .retention import category

if TYPE_CHECKING:
    from .base import StorageBackend

# Row ids per read by id: a Cosmos DB query's text (its parameters included) is bounded.
_IDS_PER_READ = 500
# The `delete_checkpoint_rows` field listing the rows of each kind.
_FIELDS: dict[Kind, str] = {
    "checkpoint": "checkpoints",
    "checkpoint_blob": "blobs",
    "checkpoint_write": "writes",
}


def _parts(rec: Record) -> int:
    return int(rec.data.get("parts", 1))


def _blob_keys(rows: Sequence[Record]) -> set[tuple[str, str, str]]:
    return {
        (rec.data["checkpoint_ns"], channel, str(version))
        for rec in rows
        for channel, version in rec.data.get("channel_versions", {}).items()
    }


def doomed_rows(
    store: StorageBackend, thread_id: str, checkpoint_rows: Sequence[Record], keep: Sequence[Record]
) -> dict[str, Any]:
    """The `delete_checkpoint_rows` args dropping `checkpoint_rows`, their pending writes,
    and the blobs they refer to that no checkpoint in `keep` refers to.

    Only blobs a dropped checkpoint refers to are dropped: the blobs of a put landing while
    this runs (a graph still running) are never among them, so they stay.
    """
    args: dict[str, Any] = {"thread_id": thread_id, "checkpoints": [], "blobs": [], "writes": []}
    for rec in checkpoint_rows:
        ns, cid = rec.data["checkpoint_ns"], rec.data["checkpoint_id"]
        args["checkpoints"].append((ns, cid))
        for w in writes(store, thread_id, ns, cid):
            d = w.data
            args["writes"].append((ns, cid, d["task_id"], d["idx"], _parts(w)))
    doomed = _blob_keys(checkpoint_rows) - _blob_keys(keep)
    keys = {blob_rid(thread_id, *key): key for key in doomed}
    rids = sorted(keys)
    parts: dict[str, int] = {}
    for start in range(0, len(rids), _IDS_PER_READ):
        found = store.get_rows("checkpoint_blob", thread_id, rids[start : start + _IDS_PER_READ])
        parts.update((b.row_id, _parts(b)) for b in found)
    args["blobs"] = [(*keys[rid], n) for rid, n in sorted(parts.items())]
    return args


class _Values:
    """Whether a checkpoint holds a value for a channel (a blob not of type "empty"), read
    from the store as asked and remembered."""

    def __init__(self, store: StorageBackend, thread_id: str) -> None:
        self._store = store
        self._thread = thread_id
        self._known: dict[str, bool] = {}

    def missing(self, rec: Record, channels: set[str]) -> set[str]:
        """Those of `channels` `rec` has a version of but no value for."""
        ns, versions = rec.data["checkpoint_ns"], rec.data.get("channel_versions", {})
        rids = {
            ch: blob_rid(self._thread, ns, ch, str(versions[ch])) for ch in channels & set(versions)
        }
        unknown = [rid for rid in rids.values() if rid not in self._known]
        self._known.update(dict.fromkeys(unknown, False))
        for b in self._store.get_rows("checkpoint_blob", self._thread, unknown):
            self._known[b.row_id] = b.data.get("type") != "empty"
        return {ch for ch, rid in rids.items() if not self._known[rid]}


def _with_ancestors(
    store: StorageBackend, thread_id: str, rows: list[Record], newest: int
) -> set[str]:
    """Row ids of the newest `newest` of `rows` (one namespace, newest first) and of the
    ancestors LangGraph rebuilds their delta channels from.

    A checkpoint lists the delta channels it holds no value of in `delta_channels`; the
    walk up its parents stops, per channel, at the first ancestor holding a value of it
    (the seed) or having no version of it (nothing was written before). A walk meeting a
    parent that is not stored keeps every row: that parent may be a put still on its way
    (workers apply ops in parallel, so a child can land first), and what the walk needs
    past it is unknown until it lands.
    """
    by_id = {rec.data["checkpoint_id"]: rec for rec in rows}
    kept = {rec.row_id for rec in rows[:newest]}
    values = _Values(store, thread_id)
    for head in rows[:newest]:
        wanted = values.missing(head, set(head.data.get("delta_channels", ())))
        at = head
        while wanted and (parent_id := at.data.get("parent_checkpoint_id")):
            if parent_id not in by_id:
                return {rec.row_id for rec in rows}
            at = by_id[parent_id]
            kept.add(at.row_id)
            wanted = values.missing(at, wanted)
    return kept


def prune_rows(
    store: StorageBackend, thread_id: str, keep_per_ns: int, at_most: int | None = None
) -> dict[str, Any] | None:
    """What keeping the newest `keep_per_ns` checkpoints of each namespace drops (None:
    nothing), keeping what they need to load (see the module's docstring); 0 drops every
    checkpoint of the thread. With `at_most`, only that many of the oldest it drops."""
    by_ns: dict[str, list[Record]] = {}
    for rec in checkpoints(store, thread_id, None):
        by_ns.setdefault(rec.data["checkpoint_ns"], []).append(rec)
    keep: list[Record] = []
    drop: list[Record] = []
    for rows in by_ns.values():
        rows.sort(key=lambda r: r.data["checkpoint_id"], reverse=True)
        needed = _with_ancestors(store, thread_id, rows, keep_per_ns)
        keep += [rec for rec in rows if rec.row_id in needed]
        drop += [rec for rec in rows if rec.row_id not in needed]
    if at_most is not None:
        # The others stay for now, and so do the blobs they refer to.
        drop.sort(key=lambda r: r.data["checkpoint_id"])
        keep += drop[at_most:]
        drop = drop[:at_most]
    return doomed_rows(store, thread_id, drop, keep) if drop else None


def _crowded_threads(store: StorageBackend, keep_per_ns: int) -> list[str]:
    sizes = Counter((rec.partition, rec.data["checkpoint_ns"]) for rec in all_checkpoints(store))
    return sorted({thread for (thread, _), n in sizes.items() if n > keep_per_ns})


def retain(
    store: StorageBackend, keep_per_ns: int, *, batch: int, dry_run: bool = False
) -> dict[str, int]:
    """Keep the newest `keep_per_ns` checkpoints of every thread's namespaces (`prune_rows`
    per thread, applied to `store`, `batch` checkpoints a write); rows removed per category,
    or with `dry_run` rows that would be. A scan of every checkpoint finds the threads
    holding more."""
    counts = {category(kind, "over_count"): 0 for kind in _FIELDS}
    for thread_id in _crowded_threads(store, keep_per_ns):
        at_most = None if dry_run else batch
        while (rows := prune_rows(store, thread_id, keep_per_ns, at_most)) is not None:
            for kind, field in _FIELDS.items():
                counts[category(kind, "over_count")] += len(rows[field])
            # A write that changed nothing (a newer one won) would be read back: stop.
            if dry_run or not store.commit([make_op("delete_checkpoint_rows", rows)])[0]:
                break
    return counts
