"""Durable publish with AGENTSTORE_PUBLISH_REPLICAS=1 through Sentinels vs a raw pipelined
`LPUSH` + `WAIT 1` of the same message to the same primary, interleaved in one run."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from agentstore_cli.launch import SentinelCluster
from broker import wire
from producer import Producer
from storage.ops import encode_op

from ..report import Figure
from .context import Context
from .workload import percentile, state

WARM_UP = 500
WAIT_TIMEOUT_MS = 5000


def replicated_latency(cluster: SentinelCluster, n: int) -> dict[str, float]:
    """Per-call latency of both, a warm-up discarded; the raw side skips script and Sentinel."""
    raw = cluster.primary().client()
    op_id, text = encode_op("save_state", {"agent_id": "b", "state_id": "s", "state": state(0)})
    message = wire.build_message(op_id, [text])
    ours: list[float] = []
    baseline: list[float] = []
    with Producer(
        broker_url=cluster.url,
        agentstore_sentinel_master=cluster.master,
        agentstore_publish_replicas=1,
    ) as prod:
        for i in range(n + WARM_UP):
            t0 = time.perf_counter_ns()
            pipe = raw.pipeline(transaction=False)
            pipe.lpush("bench:raw", message)
            pipe.execute_command("WAIT", 1, WAIT_TIMEOUT_MS)  # type: ignore[no-untyped-call]
            acks = pipe.execute()[1]
            t1 = time.perf_counter_ns()
            prod.save_state("b", f"s{i % 100}", state(i))
            t2 = time.perf_counter_ns()
            if acks < 1:
                raise RuntimeError("the raw baseline's WAIT 1 timed out")
            if i >= WARM_UP:
                baseline.append((t1 - t0) / 1000)
                ours.append((t2 - t1) / 1000)
    raw.close()
    return {
        "ours_p50_us": percentile(ours, 50),
        "ours_p99_us": percentile(ours, 99),
        "raw_p50_us": percentile(baseline, 50),
        "raw_p99_us": percentile(baseline, 99),
        "message_bytes": len(message),
    }


def replicated(ctx: Context) -> None:
    ctx.step("durable publish with PUBLISH_REPLICAS=1 (primary, 2 replicas, 3 Sentinels)")
    with (
        tempfile.TemporaryDirectory(prefix="bench-sentinel-") as workdir,
        SentinelCluster(Path(workdir)) as cluster,
    ):
        numbers = replicated_latency(cluster, ctx.sizes.publishes)
    ctx.results.raw["replicated"] = numbers
    baseline = "raw pipelined LPUSH + WAIT 1, same message, same primary"
    ratio = numbers["ours_p50_us"] / numbers["raw_p50_us"]
    ctx.results.figures.append(
        Figure(
            "durable publish p50, PUBLISH_REPLICAS=1",
            numbers["ours_p50_us"],
            "µs",
            numbers["raw_p50_us"],
            baseline,
            ratio,
            "<= 1.5x",
            ratio <= 1.5,
        )
    )
    ctx.results.figures.append(
        Figure(
            "durable publish p99, PUBLISH_REPLICAS=1",
            numbers["ours_p99_us"],
            "µs",
            numbers["raw_p99_us"],
            baseline,
            numbers["ours_p99_us"] / numbers["raw_p99_us"],
        )
    )
