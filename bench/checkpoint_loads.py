"""The latest checkpoint's load as the checkpoint tables grow, on PostgreSQL.

    python -m bench.checkpoint_loads [--sizes 1000,100000] [--deep 5000] [--reads 200]

For each size, a fresh database holds that many threads of 10 checkpoints (4 channel blobs
each, 3 pending writes each); then one more thread of `--deep` checkpoints. Prints the p50
of `load_checkpoints` (the one statement behind `get_tuple`) through agentstore's client,
beside the same statement on a plain session with the server's settings (JIT as the server
has it): what a read costs as the tables grow, and what our session settings save.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import psycopg2

from bench.services import PG_ADMIN, database
from storage import PostgreSQLClient
from storage import postgres_reads as pg
from storage.checkpoint_reads import Wanted

PER_THREAD = 10


def _fill(url: str, threads: int, per_thread: int, prefix: str) -> None:
    # Row ids as storage.checkpoints makes them (thread|ns|...), for ids without escapes;
    # the load through the client checks it finds what was written.
    versions = "jsonb_build_object('a', 'v'||c, 'b', 'v'||c, 'c', 'v'||c, 'd', 'v'||c)"
    statements = [
        f"""INSERT INTO checkpoints SELECT '{prefix}'||t||'||'||lpad(c::text, 6, '0'),
            '{prefix}'||t, '|'||lpad(c::text, 6, '0'), jsonb_build_object('checkpoint_ns', '',
            'checkpoint_id', lpad(c::text, 6, '0'), 'channel_versions', {versions},
            'type', 'bytes', 'data', 'eA=='), '1'
            FROM generate_series(1, {per_thread}) c, generate_series(1, {threads}) t""",
        f"""INSERT INTO checkpoint_blobs SELECT '{prefix}'||t||'||'||ch||'|v'||c, '{prefix}'||t,
            '|'||ch||'|v'||c, jsonb_build_object('channel', ch, 'version', 'v'||c,
            'type', 'bytes', 'data', 'eA=='), '1'
            FROM generate_series(1, {per_thread}) c, generate_series(1, {threads}) t,
            unnest(ARRAY['a', 'b', 'c', 'd']) ch""",
        f"""INSERT INTO checkpoint_writes SELECT
            '{prefix}'||t||'||'||lpad(c::text, 6, '0')||'|task|'||i, '{prefix}'||t,
            '|'||lpad(c::text, 6, '0')||'|task|'||i, jsonb_build_object('task_id', 'task',
            'idx', i, 'channel', 'a', 'type', 'bytes', 'data', 'eA=='), '1'
            FROM generate_series(1, {per_thread}) c, generate_series(1, {threads}) t,
            generate_series(0, 2) i""",
    ]
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)
            cur.execute("ANALYZE")
    finally:
        conn.close()


def _p50_ms(read: Callable[[int], object], reads: int) -> float:
    samples = []
    for n in range(reads):
        started = time.perf_counter()
        read(n)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def measure(url: str, threads: list[str], reads: int) -> tuple[float, float]:
    """p50 in ms of the latest checkpoint's load of `threads` in turn: through the client,
    and as the same statement on a session with the server's settings."""
    client = PostgreSQLClient(postgres_connection_string=url)
    plain = psycopg2.connect(url)
    plain.autocommit = True
    try:
        (found,) = client.load_checkpoints(Wanted(threads[0], "", limit=1))
        if len(found.blobs) != 4 or len(found.writes) != 3:
            raise SystemExit(f"the generated rows do not load as written: {found}")

        def ours(n: int) -> object:
            return client.load_checkpoints(Wanted(threads[n % len(threads)], "", limit=1))

        def server_settings(n: int) -> object:
            query = pg.load_checkpoints(Wanted(threads[n % len(threads)], "", limit=1))
            with plain.cursor() as cur:
                cur.execute(query.sql, query.params)
                return query.shape(cur.fetchall())

        return _p50_ms(ours, reads), _p50_ms(server_settings, reads)
    finally:
        client.close()
        plain.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", default=PG_ADMIN)
    parser.add_argument("--sizes", default="1000,100000", help="threads of 10 checkpoints")
    parser.add_argument("--deep", type=int, default=5000, help="checkpoints of the deep thread")
    parser.add_argument("--reads", type=int, default=200)
    opts = parser.parse_args()
    print("| checkpoints | read | agentstore p50 | same statement, server settings p50 |")
    print("|---|---|---|---|")
    for size in (int(s) for s in opts.sizes.split(",")):
        with database(opts.pg, "agentstore_loads") as url:
            PostgreSQLClient(postgres_connection_string=url).close()  # the schema
            print(f"filling {size:,} threads of {PER_THREAD} checkpoints...", file=sys.stderr)
            _fill(url, size, PER_THREAD, "t")
            _fill(url, 1, opts.deep, "deep")
            total = size * PER_THREAD + opts.deep
            picked = [f"t{n}" for n in range(1, min(size, 64) + 1)]
            for name, threads in (
                ("latest of 10", picked),
                (f"latest of {opts.deep:,}", ["deep1"]),
            ):
                ours, plain = measure(url, threads, opts.reads)
                print(f"| {total:,} | {name} | {ours:.2f} ms | {plain:.2f} ms |", flush=True)


if __name__ == "__main__":
    main()
