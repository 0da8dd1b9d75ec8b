"""`AgentStoreSaver`: a LangGraph checkpointer whose writes go through agentstore's queue."""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import AsyncIterator, Iterator, Sequence
from types import TracebackType
from typing import Any, Self

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from producer import Producer
from storage import checkpoint_prune
from storage import checkpoint_reads as reads
from storage.base import StorageBackend
from storage.checkpoints import checkpoint_rid
from storage.config import Settings, load_settings
from storage.factory import create_storage_client
from storage.ops import OpName, make_op
from storage.records import Record

from .pending import Pending


def _blob(typed: tuple[str, bytes]) -> dict[str, str]:
    return {"type": typed[0], "data": base64.b64encode(typed[1]).decode("ascii")}


class AgentStoreSaver(BaseCheckpointSaver[str]):
    """Checkpoints in agentstore's store: writes are queued ops, reads go straight to the store.

    `put`, `put_writes`, `delete_thread`, `delete_for_runs`, `copy_thread` and `prune`
    publish ops (durably, as `Producer` saves do) that the workers apply in batches,
    idempotently. Reads see every write this saver made to the thread they read: they wait
    until those are applied (`StaleReadError` after `read_timeout` seconds); a thread with
    nothing pending costs no wait. Another saver or process sees a write once a worker has
    applied it (session consistency). Values are serialised by LangGraph's
    `JsonPlusSerializer` without its pickle fallback; the workers never deserialise them.

    Args:
        settings: as from `storage.load_settings()`; read from the environment and `.env`
            when omitted, as `Producer` does.
        read_timeout: seconds a read waits for this saver's pending writes to its thread.
        producer: publish through this producer instead of one of the saver's own.
        **overrides: settings to use when `settings` is None.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        read_timeout: float = 30.0,
        producer: Producer | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(serde=JsonPlusSerializer(pickle_fallback=False))
        self._settings = settings or load_settings(**overrides)
        self._own_producer = producer is None
        self._producer = producer or Producer(self._settings)
        store = create_storage_client(self._settings)
        if not isinstance(store, StorageBackend):
            raise TypeError(f"AgentStoreSaver needs a storage backend, got {store!r}")
        self._store = store
        self._pending = Pending(self._producer.wait, read_timeout)

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the store's connections and, if the saver made it, its producer."""
        self._store.close()
        if self._own_producer:
            self._producer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.close)

    # -- writes -----------------------------------------------------------------------------

    def _publish(self, name: OpName, args: dict[str, Any]) -> None:
        op = make_op(name, args)  # validated here: a bad or oversized call publishes nothing
        self._producer.apply([op])
        self._pending.add(args["thread_id"], op.id)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        conf = config["configurable"]
        thread_id, ns = conf["thread_id"], conf.get("checkpoint_ns", "")
        head = checkpoint.copy()
        values: dict[str, Any] = head.pop("channel_values")  # type: ignore[misc]
        meta = get_checkpoint_metadata(config, metadata)
        blobs = [
            {
                "channel": channel,
                "version": str(version),
                **_blob(
                    self.serde.dumps_typed(values[channel]) if channel in values else ("empty", b"")
                ),
            }
            for channel, version in new_versions.items()
        ]
        self._publish(
            "put_checkpoint",
            {
                "thread_id": thread_id,
                "checkpoint_ns": ns,
                "checkpoint_id": checkpoint["id"],
                "parent_checkpoint_id": conf.get("checkpoint_id"),
                "checkpoint": _blob(self.serde.dumps_typed(head)),
                "metadata": _blob(self.serde.dumps_typed(meta)),
                "channel_versions": {k: str(v) for k, v in checkpoint["channel_versions"].items()},
                "delta_channels": sorted(meta.get("counters_since_delta_snapshot") or {}),
                "run_id": str(meta["run_id"]) if meta.get("run_id") is not None else None,
                "blobs": blobs,
            },
        )
        return {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": ns,
                "checkpoint_id": checkpoint["id"],
            }
        }

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        conf = config["configurable"]
        items = [
            {
                "idx": WRITES_IDX_MAP.get(channel, idx),
                "channel": channel,
                **_blob(self.serde.dumps_typed(value)),
            }
            for idx, (channel, value) in enumerate(writes)
        ]
        self._publish(
            "put_writes",
            {
                "thread_id": conf["thread_id"],
                "checkpoint_ns": conf.get("checkpoint_ns", ""),
                "checkpoint_id": conf["checkpoint_id"],
                "task_id": task_id,
                "task_path": task_path,
                "writes": items,
            },
        )

    def delete_thread(self, thread_id: str) -> None:
        self._publish("delete_thread", {"thread_id": thread_id})

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints made by `run_ids` and their writes (a scan of every thread)."""
        wanted = {str(r) for r in run_ids}
        if not wanted:
            return
        self._pending.settle()
        threads: dict[str, list[Record]] = {}
        for rec in reads.all_checkpoints(self._store):
            if rec.data.get("run_id") in wanted:
                threads.setdefault(rec.partition, []).append(rec)
        for thread_id, doomed in threads.items():
            gone = {r.row_id for r in doomed}
            keep = [
                r for r in reads.checkpoints(self._store, thread_id, None) if r.row_id not in gone
            ]
            self._publish(
                "delete_checkpoint_rows",
                checkpoint_prune.doomed_rows(self._store, thread_id, doomed, keep),
            )

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint of every namespace, with its blobs and writes, to the target."""
        for tup in reversed(list(self.list({"configurable": {"thread_id": source_thread_id}}))):
            conf = tup.config["configurable"]
            target: RunnableConfig = {
                "configurable": {
                    "thread_id": target_thread_id,
                    "checkpoint_ns": conf["checkpoint_ns"],
                    "checkpoint_id": tup.parent_config["configurable"]["checkpoint_id"]
                    if tup.parent_config
                    else None,
                }
            }
            versions = tup.checkpoint["channel_versions"]
            saved = self.put(target, tup.checkpoint, tup.metadata, versions)
            by_task: dict[str, list[tuple[str, Any]]] = {}
            for task_id, channel, value in tup.pending_writes or ():
                by_task.setdefault(task_id, []).append((channel, value))
            for task_id, task_writes in by_task.items():
                self.put_writes(saved, task_writes, task_id)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """`"keep_latest"`: keep the newest checkpoint of each namespace, with everything
        LangGraph needs to load it (`storage.checkpoint_prune`: the blobs older checkpoints
        wrote that it still refers to, and for a `DeltaChannel` the ancestors, with their
        writes, back to its last snapshot); `"delete"`: delete the threads."""
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"strategy must be 'keep_latest' or 'delete', got {strategy!r}")
        for thread_id in thread_ids:
            if strategy == "delete":
                self.delete_thread(thread_id)
                continue
            self._pending.settle([thread_id])
            rows = checkpoint_prune.prune_rows(self._store, thread_id, 1)
            if rows is not None:
                self._publish("delete_checkpoint_rows", rows)

    # -- reads ------------------------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        conf = config["configurable"]
        thread_id, ns = conf["thread_id"], conf.get("checkpoint_ns", "")
        self._pending.settle([thread_id])
        checkpoint_id = get_checkpoint_id(config)
        if checkpoint_id:
            rid = checkpoint_rid(thread_id, ns, checkpoint_id)
            rows = self._store.get_rows("checkpoint", thread_id, [rid])
        else:
            rows = reads.checkpoints(self._store, thread_id, ns, limit=1)
        return self._tuple(rows[0]) if rows else None

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        before_id = get_checkpoint_id(before) if before else None
        if config is None:
            self._pending.settle()
            rows: list[Record] = sorted(
                reads.all_checkpoints(self._store),
                key=lambda r: (r.partition, r.data["checkpoint_ns"], r.data["checkpoint_id"]),
                reverse=True,
            )
        else:
            conf = config["configurable"]
            thread_id, ns = conf["thread_id"], conf.get("checkpoint_ns")
            self._pending.settle([thread_id])
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

    def get_next_version(self, current: str | None, channel: None) -> str:
        # As InMemorySaver's: sortable strings, unique per put even from concurrent forks.
        number = 0 if current is None else int(str(current).split(".")[0])
        return f"{number + 1:032}.{random.random():016}"

    # -- async: the sync methods on a thread -------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        found = await asyncio.to_thread(
            lambda: list(self.list(config, filter=filter, before=before, limit=limit))
        )
        for tup in found:
            yield tup

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)
