"""Cosmos DB unreachable: each apply fails fast, so the worker's tries are the retry budget."""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.proxy import TcpProxy, cosmos_behind_proxy

pytest.importorskip("azure.cosmos")

from storage.cosmos import CosmosDBClient
from storage.errors import TransientStorageError
from storage.ops import Op, make_op

pytestmark = pytest.mark.filterwarnings("ignore:Unverified HTTPS request:Warning")

# Before: the SDK retried each refused connection 3 times with back-off, 14-17 s per apply.
FAST_FAIL_S = 5.0


@pytest.fixture
def proxied() -> Iterator[tuple[CosmosDBClient, TcpProxy]]:
    with ExitStack() as stack:
        server, proxy = cosmos_behind_proxy(stack)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client = CosmosDBClient(
                cosmos_endpoint=f"https://127.0.0.1:{proxy.port}/",
                cosmos_key=server.key,
                cosmos_database_name=f"outage-{uuid.uuid4().hex}",
            )
        stack.callback(client.close)
        yield client, proxy


def _states(n: int, tag: int) -> list[Op]:
    return [
        make_op(
            "save_state", {"agent_id": f"a{i % 60}", "state_id": f"s{i}", "state": {"tag": tag}}
        )
        for i in range(n)
    ]


def test_each_try_fails_fast_while_connections_are_refused(
    proxied: tuple[CosmosDBClient, TcpProxy],
) -> None:
    client, proxy = proxied
    client.apply(_states(600, tag=1))
    proxy.refuse()
    for tag in (2, 3, 4):  # tries as the worker makes them, 600 ops over 60 partitions
        started = time.monotonic()
        with pytest.raises(TransientStorageError, match="could not be reached"):
            client.apply(_states(600, tag=tag))
        took = time.monotonic() - started
        assert took < FAST_FAIL_S, f"a try took {took:.1f} s inside the SDK's own retries"
    started = time.monotonic()
    with pytest.raises(TransientStorageError):
        client.get_state("a0", "s0")
    assert time.monotonic() - started < FAST_FAIL_S
    proxy.accept()
    client.apply(_states(600, tag=5))  # the same client recovers once the store is back
    assert client.get_state("a7", "s547") == {"tag": 5}
