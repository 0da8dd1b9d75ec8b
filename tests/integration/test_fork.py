"""A `Producer` across `fork()` against a real redis-server and PostgreSQL: parent and child
publish distinct ops and each reads its own answers."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from broker import keys, wire
from storage import create_storage_client
from tests.forking import HOWS, Child, How, Started
from tests.integration.helpers import producer

READS = 500


@pytest.mark.parametrize("how", HOWS)
def test_parent_and_child_saves_after_fork_are_distinct_and_both_queued(
    broker: str, how: How
) -> None:
    with producer(broker, "postgresql://unused") as prod:
        before = prod.save_state("agent", "before", {"from": "parent"})
        child = Child(lambda: prod.save_state("agent", "s", {"from": "child"}), how)
        parents = prod.save_state("agent", "s", {"from": "parent"})
        childs = child.result()
    assert len({before, parents, childs}) == 3, "an op id was issued twice"
    client = redis.Redis.from_url(broker)
    try:
        queued = [
            (op["id"], op["args"]["state"]["from"])
            for raw in client.lrange(keys.QUEUE, 0, -1)
            for op in wire.parse_message(raw).ops
        ]
        assert sorted(queued) == sorted(
            [(before, "parent"), (parents, "parent"), (childs, "child")]
        )
        assert client.zcard(keys.PENDING_KEY) == 3, "each message has its recovery record"
    finally:
        client.close()


def _read_own(prod: Any, who: str) -> list[Any]:
    wrong = []
    for _ in range(READS):
        got = prod.get_state("agent", who)
        if got != {"who": who}:
            wrong.append(got)
            if len(wrong) >= 5:
                break
    return wrong


def _parent_and_child_read(broker: str, database: str, how: How) -> dict[str, Any]:
    with producer(broker, database) as prod:
        prod.get_state("agent", "A")  # the reader's pool is open

        def in_child() -> list[Any]:
            started.tell()
            wrong = _read_own(prod, "B")
            prod.close()
            return wrong

        started = Started()
        child = Child(in_child, how)
        started.wait()
        parent = _read_own(prod, "A")
        return {"parent": parent, "child": child.result(), "after": prod.get_state("agent", "A")}


@pytest.mark.parametrize("how", HOWS)
def test_parent_and_child_reads_after_fork_get_their_own_rows(
    broker: str, database: str, how: How
) -> None:
    with create_storage_client(postgres_connection_string=database) as store:
        for who in ("A", "B"):
            store.save_state("agent", who, {"who": who})
    # In a process of its own, under a deadline: a read on a shared socket can block forever.
    report = Child(lambda: _parent_and_child_read(broker, database, how), "os.fork").result()
    assert report["parent"] == [], "the parent read the child's rows"
    assert report["child"] == [], "the child read the parent's rows"
    assert report["after"] == {"who": "A"}
