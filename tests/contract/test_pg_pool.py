"""The PostgreSQL client's connection pool, on real connections: bounded, fair to waiters, and
never handing out a connection left in a transaction or closed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import psycopg2
import pytest

from storage.pg_pool import ConnectionPool, PoolClosed, PoolTimeout
from tests.services import fresh_pg_database


@pytest.fixture(scope="module")
def connect() -> Iterator[Callable[[], object]]:
    made: list[psycopg2.extensions.connection] = []
    with fresh_pg_database() as url:

        def make() -> object:
            conn = psycopg2.connect(url)
            conn.autocommit = True
            made.append(conn)
            return conn

        yield make
        for conn in made:  # the database is dropped next: nothing may stay connected
            conn.close()


def test_it_opens_minconn_now_and_at_most_maxconn(connect: Callable[[], object]) -> None:
    pool = ConnectionPool(connect, 1, 2, timeout_s=0.2)
    first = pool.getconn()
    second = pool.getconn()
    assert first is not second
    started = time.monotonic()
    with pytest.raises(PoolTimeout, match=r"within 0.2 s \(pool max 2\)"):
        pool.getconn()
    assert time.monotonic() - started >= 0.2
    pool.putconn(second)
    assert pool.getconn() is second  # a free connection is reused, not a new one opened
    pool.closeall()


def test_a_waiting_thread_gets_the_connection_given_back(connect: Callable[[], object]) -> None:
    pool = ConnectionPool(connect, 1, 1, timeout_s=30)
    held = pool.getconn()
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(pool.getconn()))
    waiter.start()
    time.sleep(0.1)
    assert not got, "the pool is exhausted: the thread must wait"
    pool.putconn(held)
    waiter.join(timeout=10)
    assert got == [held]
    pool.closeall()


def test_many_threads_share_few_connections(connect: Callable[[], object]) -> None:
    pool = ConnectionPool(connect, 0, 3, timeout_s=30)
    in_use = 0
    most = 0
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run() -> None:
        nonlocal in_use, most
        try:
            for _ in range(200):
                conn: psycopg2.extensions.connection = pool.getconn()
                with lock:
                    in_use += 1
                    most = max(most, in_use)
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                with lock:
                    in_use -= 1
                pool.putconn(conn)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[:3]
    assert 1 <= most <= 3
    pool.closeall()


def test_broken_or_unfinished_connections_are_closed_and_replaced(
    connect: Callable[[], object],
) -> None:
    pool = ConnectionPool(connect, 0, 1, timeout_s=5)
    conn: psycopg2.extensions.connection = pool.getconn()
    with conn.cursor() as cur:
        cur.execute("BEGIN")  # a write that never reached its COMMIT or ROLLBACK
    pool.putconn(conn)
    assert conn.closed
    replacement = pool.getconn()  # the slot was freed: a new connection, not a timeout
    assert replacement is not conn and not replacement.closed
    pool.putconn(replacement, close=True)
    assert replacement.closed
    assert not pool.getconn().closed
    pool.closeall()


def test_a_failed_connect_frees_its_slot(connect: Callable[[], object]) -> None:
    failures = iter([psycopg2.OperationalError("refused")])

    def flaky() -> object:
        for failure in failures:
            raise failure
        return connect()

    pool = ConnectionPool(flaky, 0, 1, timeout_s=1)
    with pytest.raises(psycopg2.OperationalError, match="refused"):
        pool.getconn()
    assert not pool.getconn().closed
    pool.closeall()


def test_closeall_closes_free_connections_now_and_the_others_when_given_back(
    connect: Callable[[], object],
) -> None:
    pool = ConnectionPool(connect, 2, 2, timeout_s=1)
    held: psycopg2.extensions.connection = pool.getconn()
    free: psycopg2.extensions.connection = pool.getconn()
    pool.putconn(free)
    pool.closeall()
    assert free.closed and not held.closed
    with pytest.raises(PoolClosed):
        pool.getconn()
    pool.putconn(held)
    assert held.closed
