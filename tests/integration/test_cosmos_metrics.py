"""A real worker on the Cosmos DB test server counts its HTTP requests by operation and the
request units they were charged (`agentstore_cosmos_requests_total`,
`agentstore_cosmos_request_charge_total`), summed over its processes."""

from __future__ import annotations

import uuid

import pytest
import redis

from agentstore_cli.launch import free_port
from agentstore_cli.launch.cosmos_server import start_cosmos_server
from producer import Producer
from tests.integration.helpers import pending, wait_until
from tests.integration.scrape import by_label, scrape, total, wait_counted
from tests.plugin import WorkerFactory

pytest.importorskip("azure.cosmos")

pytestmark = pytest.mark.filterwarnings("ignore:Unverified HTTPS request:Warning")

# The test server's own charge is always "1", as many as requests: this one tells a charge
# read from `x-ms-request-charge` and summed apart from a count of requests.
CHARGE = 2.5


def test_a_cosmos_worker_counts_its_requests_and_their_charge(
    broker: str, start_worker: WorkerFactory
) -> None:
    states, messages = 60, 20
    with start_cosmos_server(request_charge=str(CHARGE)) as server:
        env = {
            "COSMOS_ENDPOINT": server.endpoint,
            "COSMOS_KEY": server.key,
            "COSMOS_DATABASE_NAME": f"metrics-{uuid.uuid4().hex[:12]}",
        }
        port = free_port()
        start_worker(broker, "", AGENTSTORE_METRICS_PORT=str(port), **env)
        with Producer(
            broker_url=broker,
            postgres_connection_string=None,
            cosmos_endpoint=server.endpoint,
            cosmos_key=server.key,
            cosmos_database_name=env["COSMOS_DATABASE_NAME"],
        ) as prod:
            for i in range(states):
                prod.save_state(f"agent-{i % 6}", f"s{i}", {"i": i})
            for i in range(messages):
                prod.save_conversation("conv", {"i": i})
            prod.wait(timeout=60)
        client = redis.Redis.from_url(broker)
        try:
            wait_until("the drain", lambda: pending(client) == 0, 60)
        finally:
            client.close()
        wait_counted(port, states + messages)
        # Both counters move together per answer; a scrape may fall between the two.
        wait_until(
            "the charge of every request counted",
            lambda: _charge_per_request(port) == CHARGE,
            10,
            0.05,
        )
        samples = scrape(port)
    requests = by_label(samples, "agentstore_cosmos_requests_total", "operation")
    print(f"Cosmos DB requests by operation: {requests}")
    assert requests.get("create", 0) >= 1, requests  # the messages, at least
    assert requests.get("query", 0) >= 1, requests  # which states exist, per partition
    assert requests.get("read", 0) >= 1, requests  # the account, tombstones
    assert by_label(samples, "agentstore_ops_applied_total", "backend") == {
        "cosmos": states + messages
    }
    assert total(samples, "agentstore_cosmos_request_charge_total") == CHARGE * sum(
        requests.values()
    )


def _charge_per_request(port: int) -> float:
    samples = scrape(port)
    count = total(samples, "agentstore_cosmos_requests_total")
    return total(samples, "agentstore_cosmos_request_charge_total") / count if count else 0.0
