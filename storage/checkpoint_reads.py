"""Reading LangGraph checkpoint rows back (`checkpoint_prune` chooses what a prune drops).

Everything here works on the JSON the rows hold; serialised values stay base64 text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .checkpoints import blob_rid, checkpoint_rid, is_part, part_rids, thread_prefix
from .records import Kind, Record

if TYPE_CHECKING:
    from .base import StorageBackend

_SCAN_PAGE = 500


@dataclass(frozen=True, slots=True)
class Wanted:
    """Which checkpoints of a thread to load: of namespace `ns` (None: every namespace),
    only `checkpoint_id` if given, row ids below `below`, newest first, at most `limit`."""

    thread_id: str
    ns: str | None
    checkpoint_id: str | None = None
    below: str | None = None
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class Loaded:
    """A checkpoint row with the rows LangGraph needs to load it: the channel blobs of its
    `channel_versions` that exist and its pending writes (main rows in row id order, each
    with its whole base64 text)."""

    checkpoint: Record
    blobs: list[tuple[Record, str]]
    writes: list[tuple[Record, str]]


def _whole_text(kind: Kind, main: Record, parts: Mapping[str, str]) -> str:
    later = part_rids(main.row_id, int(main.data.get("parts", 1)))
    missing = [rid for rid in later if rid not in parts]
    if missing:
        raise LookupError(f"{kind} row {missing[0]!r} is missing a part; it was never written")
    return str(main.data["data"]) + "".join(parts[rid] for rid in later)


def whole(store: StorageBackend, kind: Kind, thread_id: str, mains: Sequence[Record]) -> list[str]:
    """The base64 text of each of `mains`, its later parts read and joined where it was split."""
    wanted = [rid for rec in mains for rid in part_rids(rec.row_id, int(rec.data.get("parts", 1)))]
    found = {rec.row_id: rec.data["data"] for rec in store.get_rows(kind, thread_id, wanted)}
    return [_whole_text(kind, rec, found) for rec in mains]


def assemble(checkpoint: Record, blobs: Sequence[Record], writes: Sequence[Record]) -> Loaded:
    """`Loaded` from a checkpoint row and every row of its blobs and writes, parts included
    (in any order): how a store that reads them all at once puts them together."""
    parts = {r.row_id: str(r.data["data"]) for r in (*blobs, *writes) if is_part(r)}
    return Loaded(
        checkpoint,
        [(r, _whole_text(r.kind, r, parts)) for r in _in_order(blobs) if not is_part(r)],
        [(r, _whole_text(r.kind, r, parts)) for r in _in_order(writes) if not is_part(r)],
    )


def _in_order(rows: Iterable[Record]) -> list[Record]:
    return sorted(rows, key=lambda r: r.row_id)


def complete(store: StorageBackend, rec: Record) -> Loaded:
    """`rec`'s blobs and writes read with the store's row reads (four round trips at most)."""
    thread_id, ns = rec.partition, rec.data["checkpoint_ns"]
    found = _in_order(blobs(store, thread_id, ns, rec.data["channel_versions"]))
    rows = _in_order(writes(store, thread_id, ns, rec.data["checkpoint_id"]))
    return Loaded(
        rec,
        list(zip(found, whole(store, "checkpoint_blob", thread_id, found), strict=True)),
        list(zip(rows, whole(store, "checkpoint_write", thread_id, rows), strict=True)),
    )


def load(store: StorageBackend, wanted: Wanted) -> list[Loaded]:
    """`StorageBackend.load_checkpoints` by the store's row reads, a checkpoint at a time."""
    if wanted.checkpoint_id is not None and wanted.ns is not None:
        rid = checkpoint_rid(wanted.thread_id, wanted.ns, wanted.checkpoint_id)
        rows = store.get_rows("checkpoint", wanted.thread_id, [rid])
    else:
        rows = checkpoints(
            store,
            wanted.thread_id,
            wanted.ns,
            below=wanted.below,
            limit=wanted.limit if wanted.checkpoint_id is None else None,
        )
        if wanted.checkpoint_id is not None:
            rows = [r for r in rows if r.data["checkpoint_id"] == wanted.checkpoint_id]
            rows = rows[: wanted.limit] if wanted.limit is not None else rows
    return [complete(store, rec) for rec in rows]


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
