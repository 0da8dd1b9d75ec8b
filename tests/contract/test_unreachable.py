"""A store that cannot be reached is reported as `StoreUnavailableError` (a transient
failure workers wait out) by every backend, never as a permanent `StorageError`."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from storage import StoreUnavailableError
from tests.contract.conftest import Backend
from tests.services import free_port


def _moved_to_a_closed_port(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.netloc.rsplit(':', 1)[0]}:{free_port()}").geturl()


def test_an_unreachable_store_is_a_transient_store_unavailable_error(backend: Backend) -> None:
    env = backend.fresh_env()
    key = "POSTGRES_CONNECTION_STRING" if backend.name == "postgres" else "COSMOS_ENDPOINT"
    env[key] = _moved_to_a_closed_port(env[key])
    with pytest.raises(StoreUnavailableError, match=r"127\.0\.0\.1"):
        backend.client(env)
