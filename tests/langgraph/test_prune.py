"""Prune keeps what LangGraph needs to load the kept checkpoints: a graph with channels
updated rarely (their blobs written by old checkpoints) and DeltaChannels (rebuilt from the
writes of ancestors), pruned to its latest checkpoint by the saver and by the workers'
retention job, loads and resumes exactly as the same run on InMemorySaver."""

from __future__ import annotations

from typing import Any

import pytest

from storage import checkpoint_prune
from storage.base import StorageBackend
from storage.factory import create_storage_client
from tests.integration.helpers import wait_until
from tests.langgraph.conftest import Stack

pytest.importorskip("langgraph.channels.delta")

from langgraph.checkpoint.memory import InMemorySaver

from tests.langgraph.pruning_graph import CONFIG, build, scenario


def expected() -> tuple[list[tuple[Any, ...]], int]:
    """The states of the run on InMemorySaver (never pruned), and its checkpoint count."""
    memory = InMemorySaver()
    seen = scenario(build(memory), lambda: None)
    values = seen[-1][0]
    assert values["late"] == ["late 7", "late 10", "late 13"]
    assert values["notes"][-3:] == ["answer yes", "note 14", "answer no"]
    assert values["rare"] == "rare 12" and values["fixed"] == "input"
    return seen, len(list(memory.list(CONFIG)))


def store_of(stack: Stack) -> StorageBackend:
    store = create_storage_client(stack.settings())
    assert isinstance(store, StorageBackend)
    return store


def test_saver_prune_keep_latest_then_resume_matches_in_memory(stack: Stack) -> None:
    want, total = expected()
    saver = stack.saver()
    kept: list[int] = []

    def prune() -> None:
        saver.prune(["pruned"])
        kept.append(len(list(saver.list(CONFIG))))

    assert scenario(build(saver), prune) == want
    # More than the latest stays (the DeltaChannels' ancestors), far fewer than all.
    assert all(1 < n < total for n in kept), (kept, total)
    with store_of(stack) as store:
        assert checkpoint_prune.prune_rows(store, "pruned", 1) is None


def test_worker_retention_then_resume_matches_in_memory(stack: Stack) -> None:
    want, total = expected()
    # The only worker: one with a longer interval could take the retention lock for it.
    stack.worker.stop()
    stack.restart_worker(AGENTSTORE_RETAIN_CHECKPOINTS="1", AGENTSTORE_PRUNE_INTERVAL_S="0.5")
    saver = stack.saver()
    with store_of(stack) as store:

        def pruned() -> bool:
            return checkpoint_prune.prune_rows(store, "pruned", 1) is None

        def prune() -> None:
            wait_until("the workers' retention job", pruned, timeout=60, step=0.1)

        # The retention job runs all along, also while the graph runs.
        assert scenario(build(saver), prune) == want
        wait_until("the workers' retention job", pruned, timeout=60, step=0.1)
        assert 1 < len(list(saver.list(CONFIG))) < total
