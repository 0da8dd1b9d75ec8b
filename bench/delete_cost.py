"""What a delete costs next to a save, measured in the same run on each backend.

    python -m bench.delete_cost [--calls 500]

PostgreSQL: a fresh database on the local server; Cosmos DB: the test server in
cosmos-server/ (run `npm ci --prefix cosmos-server` first).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable

from bench.services import PG_ADMIN, database, start_cosmos_server
from storage import CosmosDBClient, PostgreSQLClient, StorageBackend


def _p50_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def measure(store: StorageBackend, calls: int) -> dict[str, float]:
    """p50 of save_state, delete_state (of a saved state) and erase_agent, interleaved."""
    timings: dict[str, list[float]] = {"save_state": [], "delete_state": [], "erase_agent": []}
    steps: dict[str, Callable[[int], object]] = {
        "save_state": lambda n: store.save_state(f"a{n}", "s", {"n": n, "text": "x" * 200}),
        "delete_state": lambda n: store.delete_state(f"a{n}", "s"),
        "erase_agent": lambda n: store.erase_agent(f"a{n}"),
    }
    for n in range(calls):
        for name, step in steps.items():
            start = time.perf_counter()
            step(n)
            timings[name].append(time.perf_counter() - start)
    return {name: _p50_us(values) for name, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with database(PG_ADMIN) as url, PostgreSQLClient(postgres_connection_string=url) as pg:
        results["postgres"] = measure(pg, args.calls)
    server = start_cosmos_server()
    try:
        with CosmosDBClient(
            cosmos_endpoint=server.endpoint,
            cosmos_key=server.key,
            cosmos_database_name=f"bench_{uuid.uuid4().hex[:8]}",
            postgres_connection_string=None,
        ) as cosmos:
            results["cosmos"] = measure(cosmos, max(50, args.calls // 5))
    finally:
        server.stop()
    print(f"{'backend':10} {'save_state':>12} {'delete_state':>14} {'erase_agent':>13}  (p50, µs)")
    for backend, row in results.items():
        ratio = row["delete_state"] / row["save_state"]
        print(
            f"{backend:10} {row['save_state']:12.0f} {row['delete_state']:14.0f} "
            f"{row['erase_agent']:13.0f}  delete/save = {ratio:.2f}x"
        )


if __name__ == "__main__":
    main()
