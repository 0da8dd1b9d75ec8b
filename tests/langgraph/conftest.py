"""Savers over real stores with real workers applying their writes: PostgreSQL and Cosmos DB."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agentstore_cli.launch import CeleryWorker
from storage.config import Settings, load_settings
from tests.plugin import WorkerFactory
from tests.services import fresh_pg_database

pytest.importorskip("langgraph.checkpoint.base")

from agentstore_langgraph import AgentStoreSaver


class Stack:
    """A store, a broker and a worker applying to that store; `saver()` makes savers of it."""

    def __init__(
        self,
        name: str,
        env: dict[str, str],
        worker: CeleryWorker,
        start: Callable[..., CeleryWorker],
    ):
        self.name = name
        self.env = env
        self.worker = worker
        self._start = start
        self._savers: list[AgentStoreSaver] = []

    def settings(self) -> Settings:
        return load_settings(**{k.lower(): v for k, v in self.env.items()})

    def saver(self, **kwargs: Any) -> AgentStoreSaver:
        saver = AgentStoreSaver(self.settings(), **kwargs)
        self._savers.append(saver)
        return saver

    def restart_worker(self, **env: str) -> CeleryWorker:
        """A new worker on this store and broker (with `env` set too)."""
        self.worker = self._start(**env)
        return self.worker

    def close(self) -> None:
        for saver in self._savers:
            saver.close()


@pytest.fixture(params=["postgres", "cosmos"])
def stack(
    request: pytest.FixtureRequest,
    broker: str,
    start_worker: WorkerFactory,
) -> Iterator[Stack]:
    with fresh_pg_database("agentstore") as url:
        env = {"CELERY_BROKER_URL": broker}
        if request.param == "postgres":
            env["POSTGRES_CONNECTION_STRING"] = url
        else:
            server = request.getfixturevalue("cosmos_server")
            env.update(
                COSMOS_ENDPOINT=server.endpoint,
                COSMOS_KEY=server.key,
                COSMOS_DATABASE_NAME=f"lg_{uuid.uuid4().hex[:12]}",
                AGENTSTORE_BACKEND="cosmos",
            )

        def start(**more: str) -> CeleryWorker:
            extra = {k: v for k, v in env.items() if k != "CELERY_BROKER_URL"}
            return start_worker(broker, url if request.param == "postgres" else "", **extra, **more)

        stack = Stack(request.param, env, start(), start)
        try:
            yield stack
        finally:
            stack.close()
