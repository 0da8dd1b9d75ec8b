"""Every benchmark scenario, by the name `--only` takes, in the order a run measures them."""

from __future__ import annotations

from .checkpointers import checkpointers
from .context import Context, Scenario
from .cosmos import cosmos
from .e2e import buffered, unbuffered
from .metrics_cost import metrics_cost
from .naive import naive
from .publish import publish
from .reads import reads
from .replicated import replicated
from .sweep import sweep
from .tracing import tracing_cost

SCENARIOS: dict[str, Scenario] = {
    "e2e": Scenario(
        buffered,
        "drain of buffered saves vs raw execute_values upserts, worker RSS, vs naive",
    ),
    "naive": Scenario(naive, "drain of one plain Celery task per save (the naive baseline)"),
    "unbuffered": Scenario(unbuffered, "drain of durable single-save messages vs naive"),
    "publish": Scenario(publish, "durable publish vs raw LPUSH; buffered save_state calls"),
    "replicated": Scenario(
        replicated,
        "durable publish with PUBLISH_REPLICAS=1 through Sentinels vs raw LPUSH + WAIT 1",
    ),
    "reads": Scenario(reads, "get_state and a 1,000-message history vs raw psycopg2"),
    "cosmos": Scenario(cosmos, "Cosmos DB apply vs the SDK's upsert_item loop (test server)"),
    "tracing": Scenario(
        tracing_cost, "durable publish and drain with tracing on vs no tracer provider"
    ),
    "sweep": Scenario(sweep, "throughput vs batch size, agentstore and raw (the plot)"),
    "metrics": Scenario(metrics_cost, "drain and durable publish, Prometheus metrics on vs off"),
    "langgraph": Scenario(
        checkpointers,
        "LangGraph supersteps/s and latency: AgentStoreSaver vs AsyncPostgresSaver, in-memory",
    ),
}

__all__ = ["SCENARIOS", "Context", "Scenario"]
