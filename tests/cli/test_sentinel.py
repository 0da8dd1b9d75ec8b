"""`agentstore health` and `stats` behind Redis Sentinel: the primary, its replicas and their
lag, passwords never printed, and the view following a failover."""

from __future__ import annotations

import json
import time

from agentstore_cli.launch import SentinelCluster
from tests.cli.conftest import REDIS_PASSWORD, Cli
from tests.plugin import ClusterFactory, WorkerFactory

SENTINEL_PASSWORD = "sentinel-S3cret-Pw"


def config(cluster: SentinelCluster, pg_url: str, replicas: int = 0) -> dict[str, str]:
    return {
        "CELERY_BROKER_URL": cluster.url,
        "POSTGRES_CONNECTION_STRING": pg_url,
        "AGENTSTORE_SENTINEL_MASTER": cluster.master,
        "AGENTSTORE_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
        "AGENTSTORE_PUBLISH_REPLICAS": str(replicas),
    }


def test_health_and_stats_show_the_primary_its_replicas_and_a_failover(
    run: Cli,
    pg_url: str,
    start_sentinel_cluster: ClusterFactory,
    start_worker: WorkerFactory,
) -> None:
    cluster = start_sentinel_cluster(password=REDIS_PASSWORD, sentinel_password=SENTINEL_PASSWORD)
    primary = f"127.0.0.1:{cluster.primary().port}"
    start_worker(
        cluster.url,
        pg_url,
        AGENTSTORE_SENTINEL_MASTER=cluster.master,
        AGENTSTORE_SENTINEL_PASSWORD=SENTINEL_PASSWORD,
    )

    result = run(["health"], config(cluster, pg_url, replicas=2))
    assert SENTINEL_PASSWORD not in result.stdout
    assert result.exit_code == 0, result.stdout
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["broker", "sentinel", "store", "workers"]
    assert f"primary {primary}, 2 of 2 replica(s) online" in lines[1]
    assert "3 Sentinel(s) answered" in lines[1]
    assert lines[3].startswith("workers  OK    1 consuming")  # pinged through Sentinel

    # More replicas asked for than there are: every durable save would fail; health says so.
    result = run(["health", "--no-workers"], config(cluster, pg_url, replicas=3))
    assert result.exit_code == 1
    assert "sentinel FAIL" in result.stdout and "AGENTSTORE_PUBLISH_REPLICAS=3" in result.stdout

    result = run(["stats", "--json", "--no-workers"], config(cluster, pg_url))
    assert result.exit_code == 0, result.stdout
    view = json.loads(result.stdout)["sentinel"]
    assert view["primary"] == primary and view["replicas_online"] == 2
    assert all(isinstance(r["lag_bytes"], int) and r["lag_bytes"] >= 0 for r in view["replicas"])

    old = cluster.kill_primary()
    new = cluster.wait_for_primary(old)
    # The Sentinels list the killed server as a replica of the new primary only once they
    # end the failover, a moment after they name the new primary (seconds under load).
    deadline = time.monotonic() + 20
    while True:
        result = run(["stats", "--no-workers"], config(cluster, pg_url))
        assert SENTINEL_PASSWORD not in result.stdout
        assert result.exit_code == 0, result.stdout
        assert f"primary        127.0.0.1:{new.port}" in result.stdout
        if f"127.0.0.1:{old.port}" in result.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    # The killed server is still listed by the Sentinels, as down.
    assert f"127.0.0.1:{old.port}  DOWN" in result.stdout
    # Once the other replica follows the new primary, one replica is online again.
    cluster.wait_replicas_online(1)
    result = run(["health", "--no-workers"], config(cluster, pg_url, replicas=1))
    assert result.exit_code == 0, result.stdout
    assert f"primary 127.0.0.1:{new.port}, 1 of 2 replica(s) online" in result.stdout
