"""What the scenarios measure with: the sizes of a run, the saved states and their keys."""

from __future__ import annotations

import contextlib
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sizes:
    saves: int  # end-to-end, buffered
    unbuffered: int  # end-to-end, single-save messages
    naive: int  # one Celery task per save
    sweep: int  # saves per point of the batch-size sweep
    publishes: int  # durable publish latency samples
    buffered_calls: int  # buffered save_state calls in one thread
    reads: int  # read latency samples
    cosmos: int  # records per Cosmos DB apply
    rounds: int  # the drain and its COPY baseline, interleaved: the median of this many
    graph_runs: int  # LangGraph runs (10 supersteps each) per checkpointer and concurrency


FULL = Sizes(100_000, 20_000, 10_000, 20_000, 5_000, 100_000, 1_000, 400, 3, 256)
QUICK = Sizes(10_000, 5_000, 2_000, 5_000, 2_000, 30_000, 300, 150, 1, 128)
# Drains of a cost scenario (metrics, tracing): off and on alternated this many times at
# least, the best of each kept, so a change in the machine's load hits both alike.
COST_ROUNDS = 3


def state(i: int) -> dict[str, Any]:
    return {"step": i, "status": "thinking", "notes": "x" * 120, "scores": [0.1, 0.2, 0.3]}


def key(i: int) -> tuple[str, str]:
    return f"agent-{i % 100}", f"state-{i}"


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100)[q - 1]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (those gone count 0)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total
