"""`GroupCommit`: batches that arrive while a publish is under way leave together, within
the group's bounds; a group's failure is each of its callers', and only theirs."""

from __future__ import annotations

import asyncio

import pytest

from broker.errors import PublishError
from broker.wire import MAX_MESSAGE_CHARS, Batch
from producer.aio_group import MAX_GROUP, GroupCommit


def batch(name: str, size: int = 10) -> Batch:
    return [(name, b"x" * size, [name])]


def test_batches_arriving_meanwhile_leave_together_in_order() -> None:
    calls: list[list[str]] = []

    async def publish(messages: Batch) -> None:
        calls.append([mid for mid, _, _ in messages])
        await asyncio.sleep(0.01)

    async def main() -> None:
        group = GroupCommit(publish)
        first = group.submit(batch("a"))
        await asyncio.sleep(0)  # the first publish is under way
        rest = [group.submit(batch(f"m{i}")) for i in range(5)]
        await asyncio.gather(first, *rest)

    asyncio.run(main())
    assert calls == [["a"], ["m0", "m1", "m2", "m3", "m4"]]


def test_a_group_is_bounded_in_messages_and_characters() -> None:
    calls: list[list[str]] = []

    async def publish(messages: Batch) -> None:
        calls.append([mid for mid, _, _ in messages])

    async def main() -> None:
        group = GroupCommit(publish)
        many = [group.submit(batch(f"m{i}")) for i in range(MAX_GROUP + 1)]
        big = [group.submit(batch(f"big{i}", MAX_MESSAGE_CHARS // 2 + 1)) for i in range(2)]
        await asyncio.gather(*many, *big)

    asyncio.run(main())
    assert [len(c) for c in calls] == [MAX_GROUP, 2, 1]
    assert calls[1] == [f"m{MAX_GROUP}", "big0"] and calls[2] == ["big1"]


def test_a_failed_group_fails_its_callers_and_the_next_group_gets_its_own_publish() -> None:
    calls: list[list[str]] = []

    async def publish(messages: Batch) -> None:
        calls.append([mid for mid, _, _ in messages])
        await asyncio.sleep(0.01)
        if len(calls) == 1:
            raise PublishError("broker down")

    async def main() -> list[object]:
        group = GroupCommit(publish)
        failing = [group.submit(batch("a")), group.submit(batch("b"))]
        await asyncio.sleep(0)
        later = group.submit(batch("c"))
        return await asyncio.gather(*failing, later, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert [type(o) for o in outcomes] == [PublishError, PublishError, type(None)]
    assert calls == [["a", "b"], ["c"]]


def test_callers_left_when_the_loop_cancels_the_publisher_are_cancelled_not_hung() -> None:
    async def publish(messages: Batch) -> None:
        await asyncio.sleep(3600)

    async def main() -> None:
        group = GroupCommit(publish)
        under_way = group.submit(batch("a"))
        await asyncio.sleep(0)
        queued = group.submit(batch("b"))
        assert group._task is not None
        group._task.cancel()
        for done in (under_way, queued):
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(done, timeout=5)

    asyncio.run(main())
