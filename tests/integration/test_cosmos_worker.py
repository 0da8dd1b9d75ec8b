"""A real worker on Cosmos DB at `--loglevel INFO`, as docker-compose runs it."""

from __future__ import annotations

import uuid

import pytest

from agentstore_cli.launch import CosmosServer
from producer import Producer
from tests.plugin import WorkerFactory

pytest.importorskip("azure.cosmos")

pytestmark = pytest.mark.filterwarnings("ignore:Unverified HTTPS request:Warning")

# Lines of the SDK's per-request HTTP log (celery's format does not name the logger).
HTTP_LOG_MARKS = ("Request URL:", "Request method:", "Response status:", "'x-ms-")


@pytest.mark.parametrize("http_log", ["", "true"])
def test_the_sdk_logs_no_http_request_at_info_unless_asked(
    broker: str, cosmos_server: CosmosServer, start_worker: WorkerFactory, http_log: str
) -> None:
    env = {
        "COSMOS_ENDPOINT": cosmos_server.endpoint,
        "COSMOS_KEY": cosmos_server.key,
        "COSMOS_DATABASE_NAME": f"log-{uuid.uuid4().hex[:12]}",
    }
    worker = start_worker(broker, "", AGENTSTORE_COSMOS_HTTP_LOG=http_log, **env)
    with Producer(
        broker_url=broker,
        postgres_connection_string=None,
        cosmos_endpoint=cosmos_server.endpoint,
        cosmos_key=cosmos_server.key,
        cosmos_database_name=env["COSMOS_DATABASE_NAME"],
    ) as prod:
        for i in range(100):
            prod.save_state(f"agent-{i % 10}", f"s{i}", {"i": i})
            prod.save_conversation("conv", {"i": i})
        prod.wait(timeout=60)
        assert prod.get_state("agent-3", "s93") == {"i": 93}
    http_lines = [
        line for line in worker.log().splitlines() if any(mark in line for mark in HTTP_LOG_MARKS)
    ]
    if http_log:
        assert len(http_lines) > 100, "asked for: the SDK's HTTP log is kept"
    else:
        assert http_lines == [], f"{len(http_lines)} HTTP log lines, e.g. {http_lines[:3]}"
