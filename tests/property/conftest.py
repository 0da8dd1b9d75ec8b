"""Real stores for the property tests, and Hypothesis settings (reproducible on CI)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from hypothesis import HealthCheck, settings

from agentstore_cli.embedded import on_ci
from storage import StorageBackend
from tests.contract.conftest import Backend

# Examples are drawn once per test; the stores are shared, examples keep apart by uid.
settings.register_profile(
    "agentstore",
    deadline=None,
    derandomize=on_ci(),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("agentstore")


@pytest.fixture(scope="module", params=["postgres", "cosmos", "memory"])
def store(request: pytest.FixtureRequest) -> Iterator[StorageBackend]:
    """One store per backend for the module, on the real server (or in memory)."""
    with ExitStack() as stack:
        client = Backend.of(request, stack).client()
        assert isinstance(client, StorageBackend)
        yield client
