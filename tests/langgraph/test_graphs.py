"""Real graphs: a loop, an interrupt and its resume, and time travel, on InMemorySaver and on
AgentStoreSaver: the state histories must be the same, also when a worker is SIGKILLed."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

import pytest

from tests.langgraph.conftest import Stack

pytest.importorskip("langgraph.graph")

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt


class State(TypedDict):
    count: int
    log: Annotated[list[str], operator.add]


def build(saver: BaseCheckpointSaver[Any], on_step: Callable[[int], None] = lambda n: None) -> Any:
    def step(state: State) -> dict[str, Any]:
        on_step(state["count"])
        return {"count": state["count"] + 1, "log": [f"step {state['count']}"]}

    def ask(state: State) -> dict[str, Any]:
        answer = interrupt({"question": "go on?", "count": state["count"]})
        return {"log": [f"answer {answer}"]}

    builder = StateGraph(State)
    builder.add_node("step", step)
    builder.add_node("ask", ask)
    builder.add_edge(START, "step")
    builder.add_conditional_edges("step", lambda s: "step" if s["count"] < 3 else "ask")
    builder.add_edge("ask", END)
    return builder.compile(checkpointer=saver)


def scenario(
    graph: Any, durability: str, interrupted: Callable[[], None] = lambda: None
) -> list[tuple[Any, ...]]:
    """Run to the interrupt, resume, travel back to an earlier checkpoint, edit it, re-run."""
    config = {"configurable": {"thread_id": "t1"}}
    graph.invoke({"count": 0, "log": []}, config, durability=durability)
    interrupted()
    graph.invoke(Command(resume="yes"), config, durability=durability)
    # The oldest checkpoint after the input: with durability "exit" there are only a few.
    earlier = [s for s in graph.get_state_history(config) if "count" in s.values and s.next]
    assert earlier, "no earlier checkpoint to travel back to"
    forked = graph.update_state(earlier[-1].config, {"log": ["edited"]})
    graph.invoke(None, forked, durability=durability)
    graph.invoke(Command(resume="no"), config, durability=durability)
    return [
        (
            snap.values,
            snap.next,
            snap.metadata.get("step") if snap.metadata else None,
            snap.metadata.get("source") if snap.metadata else None,
            [i.value for task in snap.tasks for i in task.interrupts],
        )
        for snap in graph.get_state_history(config)
    ]


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
def test_histories_match_in_memory(stack: Stack, durability: str) -> None:
    expected = scenario(build(InMemorySaver()), durability)
    got = scenario(build(stack.saver()), durability)
    assert got == expected
    assert expected[0][0]["log"][-1] == "answer no"


def test_worker_sigkilled_mid_run_loses_nothing(stack: Stack) -> None:
    killed: list[bool] = []

    def kill_at_two(count: int) -> None:
        # Once: the time-travel re-run passes count 2 again, with the restarted worker.
        if count == 2 and not killed:
            killed.append(True)
            stack.worker.kill()

    def restart() -> None:
        assert not stack.worker.alive()
        stack.restart_worker()  # it recovers what the killed one had taken

    expected = scenario(build(InMemorySaver()), "sync")
    got = scenario(build(stack.saver(read_timeout=120), kill_at_two), "sync", restart)
    assert got == expected
