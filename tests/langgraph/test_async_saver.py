"""The saver's async methods: they publish through an `AsyncProducer`, and one saver's sync
and async calls read each other's writes (or fail with `StaleReadError`, never stale)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from producer import AsyncProducer
from storage.config import load_settings
from tests.langgraph.conftest import Stack

pytest.importorskip("langgraph.checkpoint.base")

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import Checkpoint, CheckpointTuple, empty_checkpoint

from agentstore_langgraph import AgentStoreSaver, StaleReadError

T = TypeVar("T")
# Long enough that a read which did not wait would have returned by then, on a loaded box.
WAITING_S = 0.5


def checkpoint(saver: AgentStoreSaver, value: int) -> Checkpoint:
    ckpt = empty_checkpoint()
    ckpt["channel_values"] = {"x": value}
    ckpt["channel_versions"] = {"x": saver.get_next_version(None, None)}
    return ckpt


def thread(name: str) -> RunnableConfig:
    return {"configurable": {"thread_id": name, "checkpoint_ns": ""}}


async def while_paused(stack: Stack, read: Awaitable[T]) -> T:
    """Start `read` with the worker paused: it must still be waiting for the writes (none is
    applied, so a read that did not wait returns at once, stale); resume and return it."""
    task = asyncio.ensure_future(read)
    try:
        done, _ = await asyncio.wait({task}, timeout=WAITING_S)
        assert not done, f"the read did not wait for the pending writes: {task.result()!r}"
    finally:
        stack.worker.resume()
    return await asyncio.wait_for(task, 60)


def test_sync_and_async_calls_read_each_others_writes(stack: Stack) -> None:
    saver = stack.saver(read_timeout=60)
    meta: Any = {"source": "input", "step": -1, "parents": {}}

    async def body() -> tuple[CheckpointTuple | None, CheckpointTuple | None]:
        first = checkpoint(saver, 1)
        stack.worker.pause()
        saved = await saver.aput(thread("t"), first, meta, first["channel_versions"])
        # A sync read (as LangGraph's sync API makes, on a thread) waits for the async write.
        after_async = await while_paused(stack, asyncio.to_thread(saver.get_tuple, thread("t")))

        second = checkpoint(saver, 2)
        stack.worker.pause()
        saved = await asyncio.to_thread(saver.put, saved, second, meta, second["channel_versions"])
        await asyncio.to_thread(saver.put_writes, saved, [("x", 3)], "task-1")
        after_sync = await while_paused(stack, saver.aget_tuple(thread("t")))
        await saver.aclose()
        return after_async, after_sync

    after_async, after_sync = asyncio.run(body())
    assert after_async is not None
    assert after_async.checkpoint["channel_values"] == {"x": 1}
    assert after_sync is not None and after_sync.checkpoint["channel_values"] == {"x": 2}
    assert after_sync.parent_config == {
        "configurable": {
            "thread_id": "t",
            "checkpoint_ns": "",
            "checkpoint_id": after_async.checkpoint["id"],
        }
    }
    assert after_sync.pending_writes == [("task-1", "x", 3)]


def test_an_async_read_raises_stale_read_error_rather_than_miss_its_writes(stack: Stack) -> None:
    saver = stack.saver(read_timeout=1)
    meta: Any = {"source": "input", "step": -1, "parents": {}}

    async def body() -> CheckpointTuple | None:
        ckpt = checkpoint(saver, 1)
        stack.worker.pause()
        try:
            await saver.aput(thread("stale"), ckpt, meta, ckpt["channel_versions"])
            with pytest.raises(StaleReadError):
                await saver.aget_tuple(thread("stale"))
            assert [t async for t in saver.alist(thread("other"))] == []  # nothing pending there
            with pytest.raises(StaleReadError):
                [t async for t in saver.alist(thread("stale"))]
        finally:
            stack.worker.resume()
        found = None
        for _ in range(60):  # the write is still pending, not lost: it lands once resumed
            try:
                found = await saver.aget_tuple(thread("stale"))
                break
            except StaleReadError:
                continue
        await saver.aclose()
        return found

    found = asyncio.run(body())
    assert found is not None and found.checkpoint["channel_values"] == {"x": 1}


def test_async_writes_publish_through_the_given_async_producer(stack: Stack) -> None:
    settings = load_settings(**{k.lower(): v for k, v in stack.env.items()})

    async def body() -> tuple[int, int, CheckpointTuple | None]:
        async with AsyncProducer(settings) as producer:
            saver = stack.saver(async_producer=producer)
            ckpt = checkpoint(saver, 7)
            meta: Any = {"source": "input", "step": -1, "parents": {}}
            stack.worker.pause()
            try:
                await saver.aput(thread("given"), ckpt, meta, ckpt["channel_versions"])
                await saver.adelete_thread("nothing-here")
                tracked = producer.unconfirmed
            finally:
                stack.worker.resume()
            found = await saver.aget_tuple(thread("given"))
            return tracked, producer.unconfirmed, found

    tracked, left, found = asyncio.run(body())
    assert tracked == 2  # both writes went out through it, none through the sync Producer
    assert left == 1  # the read waited for its thread's op; the delete is another thread's
    assert found is not None and found.checkpoint["channel_values"] == {"x": 7}
