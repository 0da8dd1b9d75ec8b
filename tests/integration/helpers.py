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
