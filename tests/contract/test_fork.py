"""Storage clients across `fork()`: the child talks on its own connections, the parent's keep
working, and neither reads the other's answers.

Each scenario runs in a forked process of its own, under a deadline: two processes sharing a
connection can block forever in a C-level read that no signal interrupts, and that must fail
the test, not stall the suite.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from storage import StorageClient, create_storage_client, pg_url
from storage.ops import make_op
from tests.contract.conftest import Backend
from tests.forking import HOWS, Child, How, Started
from tests.services import fresh_pg_database, pg_admin

ROUNDS = 200


def _open(env: dict[str, str]) -> StorageClient:
    settings: dict[str, Any] = {"postgres_connection_string": None}
    settings.update({k.lower(): v for k, v in env.items()})
    return create_storage_client(**settings)


def _busy(client: StorageClient, uid: str, who: str) -> list[Any]:
    """Reads of our own key interleaved with writes; what came back wrong (at most 5)."""
    wrong: list[Any] = []
    for i in range(ROUNDS):
        got = client.get_state(uid, who)
        if got != {"who": who}:
            wrong.append(got)
            if len(wrong) >= 5:
                break
        client.save_task(uid, f"{who}-{i}", {"who": who, "i": i})
    return wrong


def _several_partitions(client: StorageClient, uid: str, who: str) -> None:
    # Several partitions: more than one task for the Cosmos DB client's write threads.
    agents = [f"{uid}-{who}-{n}" for n in range(4)]
    state = {"who": who}
    client.apply(
        [make_op("save_state", {"agent_id": a, "state_id": "s", "state": state}) for a in agents]
    )
    client.apply([make_op("erase_agent", {"agent_id": a}) for a in agents])


def _parent_and_child(env: dict[str, str], uid: str, how: How) -> dict[str, Any]:
    client = _open(env)
    for who in ("parent", "child"):
        client.save_state(uid, who, {"who": who})
    client.get_state(uid, "parent")  # connections open
    _several_partitions(client, uid, "before")  # and the write threads started

    def in_child() -> list[Any]:
        started.tell()
        _several_partitions(client, uid, "child")
        wrong = _busy(client, uid, "child")
        client.close()  # the child's own connections only
        return wrong

    started = Started()
    child = Child(in_child, how)
    started.wait()
    parent_wrong = _busy(client, uid, "parent")
    child_wrong = child.result()
    _several_partitions(client, uid, "after")  # the parent's client still works
    report = {"parent": parent_wrong, "child": child_wrong, "tasks": len(client.list_tasks(uid))}
    client.close()
    return report


@pytest.mark.parametrize("how", HOWS)
def test_parent_and_child_each_read_and_write_their_own_after_fork(
    backend: Backend, uid: str, how: How
) -> None:
    env = backend.fresh_env()
    report = Child(lambda: _parent_and_child(env, uid, how), "os.fork").result(timeout=240)
    assert report["parent"] == [], "the parent read another process's answers"
    assert report["child"] == [], "the child read another process's answers"
    # A memory store is per process: a forked child's writes stay in the child.
    writers = 1 if backend.name == "memory" else 2
    assert report["tasks"] == writers * ROUNDS, "every write of both processes is stored"


def _sessions(database: str) -> set[int]:
    admin = pg_admin()
    try:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )
            return {row[0] for row in cur.fetchall()}
    finally:
        admin.close()


@pytest.mark.parametrize("how", HOWS)
def test_a_child_closing_its_client_leaves_the_parents_sessions_open(how: How) -> None:
    with fresh_pg_database() as url, _open({"POSTGRES_CONNECTION_STRING": url}) as client:
        client.get_state("a", "s")
        database = pg_url.database(url)  # not the URL's tail: a socket URL ends in ?host=
        parents = _sessions(database)

        def in_child() -> None:
            client.get_state("a", "s")
            client.close()

        Child(in_child, how).result()
        # A Terminate on a shared socket ends the session within milliseconds; give it
        # ample time to show (passing takes this long, failing does not).
        for _ in range(30):
            assert parents <= _sessions(database), "the child ended its parent's session"
            time.sleep(0.1)
        assert client.get_state("a", "s") is None
