"""Real graphs: a loop, an interrupt and its resume, and time travel, on InMemorySaver and on
AgentStoreSaver, through the graph's sync and its async API: the state histories must be the
same, also when a worker is SIGKILLed."""

from __future__ import annotations

import asyncio
import operator
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypedDict

import pytest

from tests.langgraph.conftest import Stack

pytest.importorskip("langgraph.graph")

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from agentstore_langgraph import AgentStoreSaver


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


class Api:
    """A graph's sync methods, or (`aio`) its async ones, each run to completion on one event
    loop that lives as long as the saver's async producer on it."""

    def __init__(self, graph: Any, aio: bool) -> None:
        self.graph = graph
        self.loop = asyncio.new_event_loop() if aio else None

    def invoke(self, *args: Any, **kwargs: Any) -> Any:
        if self.loop is None:
            return self.graph.invoke(*args, **kwargs)
        return self.loop.run_until_complete(self.graph.ainvoke(*args, **kwargs))

    def history(self, config: Any) -> list[Any]:
        if self.loop is None:
            return list(self.graph.get_state_history(config))

        async def collect(snapshots: AsyncIterator[Any]) -> list[Any]:
            return [s async for s in snapshots]

        return self.loop.run_until_complete(collect(self.graph.aget_state_history(config)))

    def update(self, config: Any, values: dict[str, Any]) -> Any:
        if self.loop is None:
            return self.graph.update_state(config, values)
        return self.loop.run_until_complete(self.graph.aupdate_state(config, values))

    def close(self, saver: BaseCheckpointSaver[Any]) -> None:
        if self.loop is not None:
            if isinstance(saver, AgentStoreSaver):  # its producer on this loop
                self.loop.run_until_complete(saver.aclose())
            self.loop.close()


def scenario(
    api: Api, durability: str, interrupted: Callable[[], None] = lambda: None
) -> list[tuple[Any, ...]]:
    """Run to the interrupt, resume, travel back to an earlier checkpoint, edit it, re-run."""
    config = {"configurable": {"thread_id": "t1"}}
    api.invoke({"count": 0, "log": []}, config, durability=durability)
    interrupted()
    api.invoke(Command(resume="yes"), config, durability=durability)
    # The oldest checkpoint after the input: with durability "exit" there are only a few.
    earlier = [s for s in api.history(config) if "count" in s.values and s.next]
    assert earlier, "no earlier checkpoint to travel back to"
    forked = api.update(earlier[-1].config, {"log": ["edited"]})
    api.invoke(None, forked, durability=durability)
    api.invoke(Command(resume="no"), config, durability=durability)
    return [
        (
            snap.values,
            snap.next,
            snap.metadata.get("step") if snap.metadata else None,
            snap.metadata.get("source") if snap.metadata else None,
            [i.value for task in snap.tasks for i in task.interrupts],
        )
        for snap in api.history(config)
    ]


@pytest.fixture(params=[False, True], ids=["sync-api", "async-api"])
def aio(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def run_scenario(
    saver: BaseCheckpointSaver[Any],
    aio: bool,
    durability: str,
    on_step: Callable[[int], None] = lambda n: None,
    interrupted: Callable[[], None] = lambda: None,
) -> list[tuple[Any, ...]]:
    api = Api(build(saver, on_step), aio)
    try:
        return scenario(api, durability, interrupted)
    finally:
        api.close(saver)


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
def test_histories_match_in_memory(stack: Stack, durability: str, aio: bool) -> None:
    expected = run_scenario(InMemorySaver(), aio, durability)
    got = run_scenario(stack.saver(), aio, durability)
    assert got == expected
    assert expected[0][0]["log"][-1] == "answer no"


def test_worker_sigkilled_mid_run_loses_nothing(stack: Stack, aio: bool) -> None:
    killed: list[bool] = []

    def kill_at_two(count: int) -> None:
        # Once: the time-travel re-run passes count 2 again, with the restarted worker.
        if count == 2 and not killed:
            killed.append(True)
            stack.worker.kill()

    def restart() -> None:
        assert not stack.worker.alive()
        stack.restart_worker()  # it recovers what the killed one had taken

    expected = run_scenario(InMemorySaver(), aio, "sync")
    got = run_scenario(stack.saver(read_timeout=120), aio, "sync", kill_at_two, restart)
    assert got == expected
