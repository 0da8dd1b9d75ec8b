"""Savers over real stores with real workers applying their writes: PostgreSQL and Cosmos DB."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.conftest import (  # noqa: F401 - fixtures used by the tests here
    Worker,
    WorkerFactory,
    broker,
    redis_server,
    start_worker,
)
from tests.services import fresh_pg_database, unavailable

pytest.importorskip("langgraph.checkpoint.base")

from agentstore_langgraph import AgentStoreSaver


@pytest.fixture(scope="module")
def cosmos() -> Iterator[Any]:
    from tests.cosmos_server import start_cosmos_server

    try:
        server = start_cosmos_server()
    except Exception as exc:
        unavailable(f"cosmosdb-server (LangGraph Cosmos DB tests NOT run): {exc}")
    try:
        yield server
    finally:
        server.stop()


class Stack:
    """A store, a broker and a worker applying to that store; `saver()` makes savers of it."""

    def __init__(self, name: str, env: dict[str, str], worker: Worker, start: Callable[[], Worker]):
        self.name = name
        self.env = env
        self.worker = worker
        self._start = start
        self._savers: list[AgentStoreSaver] = []

    def saver(self, **kwargs: Any) -> AgentStoreSaver:
        settings = {k.lower(): v for k, v in self.env.items()}
        saver = AgentStoreSaver(**settings, **kwargs)
        self._savers.append(saver)
        return saver

    def restart_worker(self) -> Worker:
        self.worker = self._start()
        return self.worker

    def close(self) -> None:
        for saver in self._savers:
            saver.close()


@pytest.fixture(params=["postgres", "cosmos"])
def stack(
    request: pytest.FixtureRequest,
    broker: str,  # noqa: F811
    start_worker: WorkerFactory,  # noqa: F811
) -> Iterator[Stack]:
    with fresh_pg_database("agentstore") as url:
        env = {"CELERY_BROKER_URL": broker}
        if request.param == "postgres":
            env["POSTGRES_CONNECTION_STRING"] = url
        else:
            server = request.getfixturevalue("cosmos")
            env.update(
                COSMOS_ENDPOINT=server.endpoint,
                COSMOS_KEY=server.key,
                COSMOS_DATABASE_NAME=f"lg_{uuid.uuid4().hex[:12]}",
                AGENTSTORE_BACKEND="cosmos",
            )

        def start() -> Worker:
            extra = {k: v for k, v in env.items() if k != "CELERY_BROKER_URL"}
            return start_worker(broker, url if request.param == "postgres" else "", **extra)

        stack = Stack(request.param, env, start(), start)
        try:
            yield stack
        finally:
            stack.close()
