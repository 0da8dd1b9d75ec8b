"""Reading checkpoints back: which rows a read wants (`storage.checkpoint_reads.Wanted`),
and LangGraph's tuples made from the rows the store returns (`Loaded`)."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
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
from storage.checkpoint_reads import Loaded, Wanted
from storage.checkpoints import checkpoint_rid


def wanted_one(config: RunnableConfig) -> Wanted:
    """The checkpoint `get_tuple(config)` returns: the given one, else the newest."""
    conf = config["configurable"]
    return Wanted(
        conf["thread_id"], conf.get("checkpoint_ns", ""), get_checkpoint_id(config), limit=1
    )


def wanted_list(
    config: RunnableConfig, filter: dict[str, Any] | None, before_id: str | None, limit: int | None
) -> Wanted:
    """The checkpoints `list(config, ...)` picks from (`StoreReads._pick` picks)."""
    conf = config["configurable"]
    thread_id, ns = conf["thread_id"], conf.get("checkpoint_ns")
    below = checkpoint_rid(thread_id, ns, before_id) if ns is not None and before_id else None
    # A metadata filter is applied after the read, so it cannot limit the read.
    return Wanted(thread_id, ns, get_checkpoint_id(config), below, None if filter else limit)


def load_everything(store: StorageBackend) -> list[Loaded]:
    """Every checkpoint of every thread, newest first per namespace (`list(None)`)."""
    rows = sorted(
        reads.all_checkpoints(store),
        key=lambda r: (r.partition, r.data["checkpoint_ns"], r.data["checkpoint_id"]),
        reverse=True,
    )
    return [reads.complete(store, rec) for rec in rows]


class StoreReads(BaseCheckpointSaver[str]):
    """Checkpoint tuples from the store's rows, values deserialised by `serde`."""

    def _pick(
        self,
        found: Iterable[Loaded],
        filter: dict[str, Any] | None,
        before_id: str | None,
        limit: int | None,
    ) -> Iterator[Loaded]:
        """`found` as `list` returns them: older than `before_id`, metadata matching `filter`,
        at most `limit`."""
        left = limit
        for loaded in found:
            d = loaded.checkpoint.data
            if before_id and d["checkpoint_id"] >= before_id:
                continue
            if filter:
                meta = self._loads(d["metadata"])
                if not all(meta.get(k) == v for k, v in filter.items()):
                    continue
            if left is not None:
                if left <= 0:
                    return
                left -= 1
            yield loaded

    def _loads(self, typed: dict[str, str]) -> Any:
        return self.serde.loads_typed((typed["type"], base64.b64decode(typed["data"])))

    def _tuple(self, loaded: Loaded) -> CheckpointTuple:
        rec = loaded.checkpoint
        d = rec.data
        thread_id, ns, cid = rec.partition, d["checkpoint_ns"], d["checkpoint_id"]
        checkpoint: Checkpoint = self._loads(d)
        values = {
            blob.data["channel"]: self._loads({"type": blob.data["type"], "data": text})
            for blob, text in loaded.blobs
            if blob.data["type"] != "empty"
        }
        ordered = sorted(
            loaded.writes,
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
