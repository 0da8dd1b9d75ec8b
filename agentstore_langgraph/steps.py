"""The saver's methods as steps, run by a blocking or an asyncio driver: one body per method.

A method body is a generator that yields what it needs done (`Settle`, `Load`, `Read`,
`Publish`) and gets each read's result back; it does no I/O itself. `drive` runs it with
blocking calls (`Producer`, the store), `adrive` with coroutines (`AsyncProducer`,
PostgreSQL's async driver or the store on reader threads), so sync and async methods share
every line of logic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

from storage.checkpoint_reads import Wanted

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Settle:
    """Wait for this saver's pending writes to `threads` (None: to every thread)."""

    threads: list[str] | None


@dataclass(frozen=True, slots=True)
class Load:
    """Load the checkpoints `wanted` names (`StorageBackend.load_checkpoints`: one round
    trip on PostgreSQL); the step's result is the list of `Loaded`."""

    wanted: Wanted


@dataclass(frozen=True, slots=True)
class Read:
    """Run `fn` against the store (blocking); the step's result is what it returns."""

    fn: Callable[[], Any]


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish an op, a write to `thread_id`, durably, and track it for read-your-writes:
    `op_id` and `text` as `storage.checkpoint_encode.encode_checkpoint_op` made them."""

    thread_id: str
    op_id: str
    text: str


Step: TypeAlias = Settle | Load | Read | Publish
Steps: TypeAlias = Generator[Step, Any, T]


def drive(steps: Steps[T], do: Callable[[Step], Any]) -> T:
    """Run `steps` to their end, each step by `do`; returns what the body returns."""
    reply: Any = None
    while True:
        try:
            step = steps.send(reply)
        except StopIteration as end:
            return end.value  # type: ignore[no-any-return]
        reply = do(step)


async def adrive(steps: Steps[T], do: Callable[[Step], Awaitable[Any]]) -> T:
    """`drive`, each step awaited."""
    reply: Any = None
    while True:
        try:
            step = steps.send(reply)
        except StopIteration as end:
            return end.value  # type: ignore[no-any-return]
        reply = await do(step)
