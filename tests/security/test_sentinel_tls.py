"""A replicated broker behind Sentinels, servers and Sentinels speaking TLS only: producer
and worker verify both against the URL's CA, and refuse an unknown certificate."""

from __future__ import annotations

import shutil
import time

import pytest
import redis

from agentstore_cli.launch import SentinelCluster, Tls
from producer import Producer, PublishError
from tests.plugin import ClusterFactory, WorkerFactory
from tests.security.tls import make_certificates
from tests.services import unavailable

SENTINEL_PASSWORD = "sentinel-tls-pw"


@pytest.fixture
def tls_cluster(
    start_sentinel_cluster: ClusterFactory, tmp_path_factory: pytest.TempPathFactory
) -> SentinelCluster:
    if shutil.which("openssl") is None:
        unavailable("openssl is needed for the TLS broker's certificates")
    directory = tmp_path_factory.mktemp("sentinel-tls")
    make_certificates(directory)
    tls = Tls(directory / "server.pem", directory / "server.key", directory / "ca.pem")
    return start_sentinel_cluster(tls=tls, sentinel_password=SENTINEL_PASSWORD)


def test_producer_and_worker_through_tls_sentinels_and_certificates_are_verified(
    tls_cluster: SentinelCluster, database: str, start_worker: WorkerFactory
) -> None:
    settings = {
        "agentstore_sentinel_master": tls_cluster.master,
        "agentstore_sentinel_password": SENTINEL_PASSWORD,
        "agentstore_sentinel_tls": True,
        "postgres_connection_string": database,
    }
    worker = start_worker(
        tls_cluster.url,
        database,
        AGENTSTORE_SENTINEL_PASSWORD=SENTINEL_PASSWORD,
        AGENTSTORE_SENTINEL_TLS="true",
    )
    with Producer(
        broker_url=tls_cluster.url,
        agentstore_publish_replicas=2,
        **settings,  # type: ignore[arg-type]
    ) as prod:
        op_id = prod.save_state("agent", "over-tls", {"secure": True})
        assert op_id is not None
        prod.wait([op_id], timeout=30)
        assert prod.get_state("agent", "over-tls") == {"secure": True}
    # Without the CA the Sentinels' certificate is unknown: refused, not silently accepted
    # (redis-py reports each Sentinel's refusal only as "network:ConnectionError"), in time.
    untrusted = ";".join(part.split("?")[0] for part in tls_cluster.url.split(";"))
    with Producer(broker_url=untrusted, publish_timeout=1, **settings) as prod:  # type: ignore[arg-type]
        began = time.monotonic()
        with pytest.raises(PublishError, match="No master found") as caught:
            prod.save_state("agent", "s", {"x": 0.5})
        assert time.monotonic() - began < 1.5
        assert not caught.value.may_be_published
    client = redis.Redis("127.0.0.1", tls_cluster.sentinels[0].port, ssl=True, socket_timeout=2)
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        client.ping()
    client.close()
    assert worker.alive()
