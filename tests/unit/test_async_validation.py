"""`AsyncProducer` refuses exactly what `Producer` refuses, with the same errors, before any
I/O (the broker URL below has nothing listening: neither producer ever connects)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from producer import AsyncProducer, Producer

NOWHERE = "redis://127.0.0.1:1/0"
BAD_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("save_state", ("", "s", {}), {}),
    ("save_state", ("a", "s" * 10_000, {}), {}),
    ("save_state", ("a", "s", ["not", "a", "dict"]), {}),
    ("save_state", ("a", "s", {"x": float("nan")}), {}),
    ("save_state", ("a", "s", {}), {"version": "not a version!"}),
    ("save_state", ("a", "s", {}), {"version": -1}),
    ("save_state", (1, "s", {}), {}),
    ("save_task", ("a", None, {}), {}),
    ("save_conversation", ("c", "not a dict"), {}),
    ("save_transactions", ("case", [{"id": 5}]), {}),
    ("save_transactions", ("case", "nope"), {}),
    ("delete_state", ("a", ""), {}),
    ("delete_task", ("a/../b" * 200, "t"), {}),
    ("delete_conversation", ("",), {}),
    ("delete_transactions", ("case", ["ok", 3]), {}),
    ("erase_agent", ("",), {}),
]


def _error(call: Any) -> tuple[type[BaseException], str]:
    with pytest.raises(Exception) as info:
        call()
    return type(info.value), str(info.value)


@pytest.mark.parametrize(("method", "args", "kwargs"), BAD_CALLS)
def test_a_bad_save_raises_what_producer_raises(
    method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with Producer(broker_url=NOWHERE) as sync:
        expected = _error(lambda: getattr(sync, method)(*args, **kwargs))

    async def main() -> tuple[type[BaseException], str]:
        async with AsyncProducer(broker_url=NOWHERE) as store:
            try:
                await getattr(store, method)(*args, **kwargs)
            except Exception as exc:
                return type(exc), str(exc)
        raise AssertionError(f"{method}{args} was accepted")

    assert asyncio.run(main()) == expected


@pytest.mark.parametrize(
    "options",
    [{"linger_ms": -1}, {"max_batch": 0}, {"max_batch": 501}, {"broker_url": "http://x"}],
)
def test_bad_options_raise_what_producer_raises(options: dict[str, Any]) -> None:
    options = {"broker_url": NOWHERE, **options}
    assert _error(lambda: AsyncProducer(**options)) == _error(lambda: Producer(**options))
