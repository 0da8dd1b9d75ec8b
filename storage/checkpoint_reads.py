"""Reading LangGraph checkpoint rows back (`checkpoint_prune` chooses what a prune drops).

Everything here works on the JSON the rows hold; serialised values stay base64 text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .checkpoints import blob_rid, is_part, part_rids, thread_prefix
from .records import Kind, Record

if TYPE_CHECKING:
    from .base import StorageBackend

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
