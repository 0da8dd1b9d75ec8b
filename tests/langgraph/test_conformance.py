"""LangGraph's own conformance suite against AgentStoreSaver, real workers applying its writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.langgraph.conftest import Stack

conformance = pytest.importorskip("langgraph.checkpoint.conformance")


def test_conformance_all_base_and_extended_capabilities(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    # The conformance package ships no type information for its decorator.
    @conformance.checkpointer_test(name=f"AgentStoreSaver ({stack.name})")  # type: ignore[untyped-decorator]
    async def factory() -> AsyncIterator[object]:
        saver = stack.saver()
        try:
            yield saver
        finally:
            await saver.aclose()  # its producer on this event loop

    report = asyncio.run(conformance.validate(factory))
    with capsys.disabled():
        report.print_report()
    assert report.passed_all(), report.to_dict()
