"""A graph for prune tests: channels updated rarely (their blobs written by old checkpoints)
and DeltaChannels (rebuilt from the writes of ancestors), run to an interrupt twice."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypedDict

from langgraph.channels import DeltaChannel
from langgraph.checkpoint.base import BaseCheckpointSaver
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
