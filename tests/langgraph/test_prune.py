"""Prune keeps what LangGraph needs to load the kept checkpoints: a graph with channels
updated rarely (their blobs written by old checkpoints) and DeltaChannels (rebuilt from the
writes of ancestors), pruned to its latest checkpoint by the saver and by the workers'
retention job, loads and resumes exactly as the same run on InMemorySaver."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypedDict

import pytest

from storage import checkpoint_prune
from storage.base import StorageBackend
from storage.factory import create_storage_client
from tests.integration.helpers import wait_until
from tests.langgraph.conftest import Stack

pytest.importorskip("langgraph.channels.delta")

from langgraph.channels import DeltaChannel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

STEPS = 14
CONFIG: Any = {"configurable": {"thread_id": "pruned"}}


def extend(state: list[str], batches: Sequence[list[str]]) -> list[str]:
    return [*state, *(item for batch in batches for item in batch)]


class State(TypedDict, total=False):
    count: int
    log: Annotated[list[str], operator.add]  # every step
    rare: str  # every 4th step: most checkpoints name an older checkpoint's blob
    fixed: str  # the input only: every checkpoint names the first one's blob
    notes: Annotated[list[str], DeltaChannel(extend, snapshot_frequency=5)]  # every other step
    late: Annotated[list[str], DeltaChannel(extend)]  # from step 7 on, never snapshotted


def build(saver: BaseCheckpointSaver[Any]) -> Any:
    def step(state: State) -> dict[str, Any]:
        n = state["count"]
        update: dict[str, Any] = {"count": n + 1, "log": [f"step {n}"]}
        if n % 4 == 0:
            update["rare"] = f"rare {n}"
        if n % 2 == 0:
            update["notes"] = [f"note {n}"]
        if n >= 7 and n % 3 == 1:
            update["late"] = [f"late {n}"]
        return update

    def ask(state: State) -> dict[str, Any]:
        answer = interrupt({"count": state["count"]})
        return {"log": [f"answer {answer}"], "notes": [f"answer {answer}"]}

    builder = StateGraph(State)
    builder.add_node("step", step)
    builder.add_node("ask", ask)
    builder.add_edge(START, "step")
    builder.add_conditional_edges("step", lambda s: "step" if s["count"] < STEPS else "ask")
    builder.add_edge("ask", END)
    return builder.compile(checkpointer=saver)


def observe(graph: Any) -> tuple[Any, ...]:
    snap = graph.get_state(CONFIG)
    return snap.values, snap.next, [i.value for task in snap.tasks for i in task.interrupts]


def scenario(graph: Any, prune: Callable[[], None]) -> list[tuple[Any, ...]]:
    """Run to the interrupt, prune, resume; a new input, prune, resume: the states seen."""
    seen = []
    graph.invoke({"count": 0, "log": [], "rare": "none", "fixed": "input", "notes": []}, CONFIG)
    prune()
    seen.append(observe(graph))
    graph.invoke(Command(resume="yes"), CONFIG)
    seen.append(observe(graph))
    graph.invoke({"log": ["again"]}, CONFIG)  # one more step, to the interrupt again
    prune()
    seen.append(observe(graph))
    graph.invoke(Command(resume="no"), CONFIG)
    seen.append(observe(graph))
    return seen


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
    stack.another_worker(AGENTSTORE_RETAIN_CHECKPOINTS="1", AGENTSTORE_PRUNE_INTERVAL_S="0.5")
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
