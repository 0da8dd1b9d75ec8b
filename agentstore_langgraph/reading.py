"""Reading checkpoints back from the store: blocking, no waiting for pending writes (the
saver's sync methods call these directly, its async ones on reader threads)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    Checkpoint,
    CheckpointTuple,
    get_checkpoint_id,
    writes_sort_key,
)

from storage import checkpoint_reads as reads
from storage.base import StorageBackend
from storage.checkpoints import checkpoint_rid
from storage.records import Record


class StoreReads(BaseCheckpointSaver[str]):
    """Checkpoint tuples from `_store`'s rows, values deserialised by `serde`."""

    _store: StorageBackend

    def _read_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        conf = config["configurable"]
        thread_id, ns = conf["thread_id"], conf.get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config)
        if checkpoint_id:
            rid = checkpoint_rid(thread_id, ns, checkpoint_id)
            rows = self._store.get_rows("checkpoint", thread_id, [rid])
        else:
            rows = reads.checkpoints(self._store, thread_id, ns, limit=1)
        return self._tuple(rows[0]) if rows else None

    def _list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """`list` without waiting for pending writes."""
        before_id = get_checkpoint_id(before) if before else None
        if config is None:
            rows: list[Record] = sorted(
                reads.all_checkpoints(self._store),
                key=lambda r: (r.partition, r.data["checkpoint_ns"], r.data["checkpoint_id"]),
                reverse=True,
            )
        else:
            conf = config["configurable"]
            thread_id, ns = conf["thread_id"], conf.get("checkpoint_ns")
            below = (
                checkpoint_rid(thread_id, ns, before_id) if ns is not None and before_id else None
            )
            db_limit = limit if not filter and not get_checkpoint_id(config) else None
            rows = reads.checkpoints(self._store, thread_id, ns, below=below, limit=db_limit)
            if cid := get_checkpoint_id(config):
                rows = [r for r in rows if r.data["checkpoint_id"] == cid]
        left = limit
        for rec in rows:
            if before_id and rec.data["checkpoint_id"] >= before_id:
                continue
            if filter:
                meta = self._loads(rec.data["metadata"])
                if not all(meta.get(k) == v for k, v in filter.items()):
                    continue
            if left is not None:
                if left <= 0:
                    return
                left -= 1
            yield self._tuple(rec)

    def _loads(self, typed: dict[str, str]) -> Any:
        return self.serde.loads_typed((typed["type"], base64.b64decode(typed["data"])))

    def _tuple(self, rec: Record) -> CheckpointTuple:
        d = rec.data
        thread_id, ns, cid = rec.partition, d["checkpoint_ns"], d["checkpoint_id"]
        checkpoint: Checkpoint = self._loads(d)
        found = reads.blobs(self._store, thread_id, ns, checkpoint["channel_versions"])
        values = {}
        for blob, text in zip(
            found, reads.whole(self._store, "checkpoint_blob", thread_id, found), strict=True
        ):
            if blob.data["type"] != "empty":
                values[blob.data["channel"]] = self._loads(
                    {"type": blob.data["type"], "data": text}
                )
        rows = reads.writes(self._store, thread_id, ns, cid)
        texts = reads.whole(self._store, "checkpoint_write", thread_id, rows)
        ordered = sorted(
            zip(rows, texts, strict=True),
            key=lambda p: writes_sort_key(
                p[0].data["task_path"], p[0].data["task_id"], p[0].data["idx"]
            ),
        )
        parent = d.get("parent_checkpoint_id")
        return CheckpointTuple(
            config={
                "configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": cid}
            },
            checkpoint={**checkpoint, "channel_values": values},
            metadata=self._loads(d["metadata"]),
            parent_config={
                "configurable": {
                    "thread_id": thread_id,
                    "checkpoint_ns": ns,
                    "checkpoint_id": parent,
                }
            }
            if parent
            else None,
            pending_writes=[
                (
                    w.data["task_id"],
                    w.data["channel"],
                    self._loads({"type": w.data["type"], "data": text}),
                )
                for w, text in ordered
            ],
        )
