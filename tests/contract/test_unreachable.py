"""A store that cannot be reached is reported as `StoreUnavailableError` (a transient
failure workers wait out) by every backend, never as a permanent `StorageError`."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from agentstore_cli.launch import free_port
from storage import StoreUnavailableError
from tests.contract.conftest import Backend


def _moved_to_a_closed_port(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.netloc.rsplit(':', 1)[0]}:{free_port()}").geturl()


def test_an_unreachable_store_is_a_transient_store_unavailable_error(backend: Backend) -> None:
    if backend.name == "memory":
        pytest.skip("the in-memory store has no server that could be unreachable")
    env = backend.fresh_env()
    if backend.name == "postgres":
        # A TCP address even when the suite's server is the embedded one (a socket URL).
        env["POSTGRES_CONNECTION_STRING"] = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    else:
        env["COSMOS_ENDPOINT"] = _moved_to_a_closed_port(env["COSMOS_ENDPOINT"])
    with pytest.raises(StoreUnavailableError, match=r"127\.0\.0\.1"):
        backend.client(env)
