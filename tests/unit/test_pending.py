"""The saver's read-your-writes bookkeeping stays bounded and never drops an awaited op."""

from __future__ import annotations

import gc

import pytest

from agentstore_langgraph.pending import SWEEP_EVERY, Pending, StaleReadError


def test_threads_written_and_never_read_do_not_grow_it_once_their_ops_are_applied() -> None:
    applied: set[str] = set()
    pending = Pending(timeout=1.0)
    for i in range(10 * SWEEP_EVERY):
        op = f"op{i}"
        pending.add(f"thread-{i}", op, lambda o: o not in applied)
        applied.add(op)  # a worker applied it and the producer's tracker forgot it
    assert len(pending) < SWEEP_EVERY


def test_a_sweep_keeps_what_a_producer_still_awaits_and_a_read_waits_for_it() -> None:
    awaited = {"op-slow"}
    pending = Pending(timeout=1.0)
    pending.add("slow", "op-slow", lambda o: o in awaited)
    for i in range(2 * SWEEP_EVERY - 1):  # the last add sweeps
        pending.add(f"t{i}", f"op{i}", lambda o: o in awaited)
    assert len(pending) == 1
    waited: list[list[str]] = []

    def wait(ops: list[str], timeout: float) -> None:
        waited.append(ops)
        raise TimeoutError

    with pytest.raises(StaleReadError):
        pending.settle(wait, ["slow"])
    assert waited == [["op-slow"]]
    pending.settle(lambda ops, timeout: None, ["slow"])
    assert len(pending) == 0
    pending.settle(lambda ops, timeout: pytest.fail("nothing pending: no wait"), ["slow"])


def test_ops_of_one_producer_keep_one_check_not_one_object_each() -> None:
    # Every object kept is one more for each of the garbage collector's full passes.
    class Producer:
        def is_unconfirmed(self, op_id: str) -> bool:
            return True

    producer = Producer()
    pending = Pending(timeout=1.0)
    gc.collect()
    before = len(gc.get_objects())
    for i in range(1000):
        pending.add("thread", f"op{i}", producer.is_unconfirmed)
    gc.collect()
    assert len(gc.get_objects()) - before < 100
    assert len(pending) == 1000
