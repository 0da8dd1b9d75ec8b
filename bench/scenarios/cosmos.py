"""Cosmos DB: `CosmosDBClient.apply` vs the SDK's own upsert loop, on the local test server."""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any

from storage.ops import make_op

from ..report import Figure
from ..services import start_cosmos_server
from .context import Context
from .workload import state


def apply_rate(n: int) -> dict[str, float]:
    """`CosmosDBClient.apply` of `n` states in 10 partitions vs an SDK `upsert_item` loop."""
    from azure.cosmos import CosmosClient, PartitionKey

    from storage.cosmos import LOOPBACK_TLS_WARNING, CosmosDBClient
    from storage.cosmos_sdk import REQUESTS

    server = start_cosmos_server()
    # The test server's certificate is self-signed on loopback, which the SDK accepts for
    # 127.0.0.1 only; urllib3 would warn about it on every request of the raw SDK loop.
    warnings.filterwarnings("ignore", message=LOOPBACK_TLS_WARNING)
    print(
        "   (Cosmos DB test server: self-signed certificate on 127.0.0.1, expected; "
        "urllib3's per-request warning is silenced)",
        file=sys.stderr,
    )
    try:
        ops = [
            make_op(
                "save_state",
                {"agent_id": f"agent-{i % 10}", "state_id": f"s{i}", "state": state(i)},
            )
            for i in range(n)
        ]
        items = [
            {
                "id": f"agent-{i % 10}|s{i}",
                "agent_id": f"agent-{i % 10}",
                "state_id": f"s{i}",
                "version": op.version,
                "position": op.version,
                "data": state(i),
            }
            for i, op in enumerate(ops)
        ]
        ours: list[float] = []
        raws: list[float] = []
        requests: dict[str, int] = {"ours": 0, "raw": 0}

        def count_raw(headers: object, body: object) -> None:
            requests["raw"] += 1

        sdk = CosmosClient(server.endpoint, credential=server.key)
        for attempt in range(2):
            db = sdk.create_database_if_not_exists(f"raw{attempt}")
            container = db.create_container_if_not_exists("agent_states", PartitionKey("/agent_id"))
            started = time.perf_counter()
            for item in items:
                container.upsert_item(item, response_hook=count_raw)
            raws.append(n / (time.perf_counter() - started))
            client = CosmosDBClient(
                cosmos_endpoint=server.endpoint,
                cosmos_key=server.key,
                cosmos_database_name=f"ours{attempt}",
            )
            before = _requests(REQUESTS)
            started = time.perf_counter()
            client.apply(ops)
            ours.append(n / (time.perf_counter() - started))
            requests["ours"] += _requests(REQUESTS) - before
            client.close()
        sdk.close()
    finally:
        server.stop()
    return {
        "ours_per_s": max(ours),
        "raw_per_s": max(raws),
        "ours_requests_per_save": requests["ours"] / (2 * n),
        "raw_requests_per_save": requests["raw"] / (2 * n),
    }


def _requests(counter: Any) -> int:
    """Every HTTP request the SDK client of `storage.cosmos_sdk` made so far, all operations."""
    return int(
        sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))
    )


def cosmos(ctx: Context) -> None:
    n = ctx.sizes.cosmos
    ctx.step(f"cosmos: {n} records")
    cs = apply_rate(n)
    ctx.results.raw["cosmos"] = cs
    r = cs["ours_per_s"] / cs["raw_per_s"]
    ctx.results.figures.append(
        Figure(
            f"Cosmos DB apply, {n} states in 10 partitions",
            cs["ours_per_s"],
            "records/s",
            cs["raw_per_s"],
            "raw SDK upsert_item loop",
            r,
            ">= 1x",
            r >= 1,
        )
    )
    per_save = cs["ours_requests_per_save"]
    ctx.results.figures.append(
        Figure(
            f"Cosmos DB requests per save, apply of {n} states in 10 partitions",
            per_save,
            "requests",
            cs["raw_requests_per_save"],
            "raw SDK upsert_item loop: one request per save",
            per_save / cs["raw_requests_per_save"],
        )
    )
