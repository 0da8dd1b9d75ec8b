"""Shared steps of the integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg2
import redis

from broker import keys
from producer import Producer


def producer(broker: str, database: str, linger_ms: float = 0.0) -> Producer:
    return Producer(broker_url=broker, postgres_connection_string=database, linger_ms=linger_ms)


def wait_until(what: str, check: Callable[[], bool], timeout: float, step: float = 0.02) -> float:
    """Poll `check` until true; return the seconds it took, fail after `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - start


def pending(client: redis.Redis) -> int:
    return int(client.zcard(keys.PENDING_KEY))


def pending_at_most(client: redis.Redis, n: int) -> Callable[[], bool]:
    """A `wait_until` check: at most `n` messages published and not yet confirmed."""
    return lambda: pending(client) <= n


def rows(database: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = psycopg2.connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())
    finally:
        conn.close()


def execute(database: str, sql: str) -> None:
    conn = psycopg2.connect(database)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


class Workload:
    """States saved in several versions each, plus conversations, to check afterwards."""

    def __init__(self, keys: int, versions: int, messages: int, conversations: int = 10) -> None:
        self.keys, self.versions = keys, versions
        self.messages, self.conversations = messages, conversations

    def publish(self, prod: Producer) -> None:
        for v in range(self.versions):
            for k in range(self.keys):
                prod.save_state("agent", f"s{k}", {"v": v, "k": k})
        for n in range(self.messages):
            prod.save_conversation(f"conv{n % self.conversations}", {"n": n})

    @property
    def total(self) -> int:
        return self.keys * self.versions + self.messages

    def check(self, prod: Producer) -> None:
        """Nothing lost, no state older than its last save, each conversation complete, without
        duplicates and in send order; read through `prod`, so from whichever store it uses."""
        names = prod.list_states("agent")
        assert len(names) == self.keys, "nothing lost"
        newest = self.versions - 1
        stale = [sid for sid in names if (prod.get_state("agent", sid) or {}).get("v") != newest]
        assert not stale, f"{len(stale)} states not at their newest version"
        for c in range(self.conversations):
            history = prod.get_conversation_history(f"conv{c}")
            assert history == [{"n": n} for n in range(c, self.messages, self.conversations)], (
                "complete, no duplicates, in send order"
            )
