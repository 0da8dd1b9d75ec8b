"""Producer threads that save all four kinds at a steady rate and record every call."""

from __future__ import annotations

import inspect
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from producer import Producer, PublishError
from storage.versions import new_version
from tests.reliability.ledger import Kind, Save

_KINDS: tuple[Kind, ...] = ("state", "task", "conversation", "transaction")
_WEIGHTS = (3, 2, 3, 2)
_PAD = "aé漢🙂 -"


def has_buffered_mode() -> bool:
    """Whether `Producer` offers the buffered publish mode (a `linger_ms` argument)."""
    return "linger_ms" in inspect.signature(Producer.__init__).parameters


class ProducerThread(threading.Thread):
    """Saves at about `rate` ops/s until stopped; each call lands in `saves`.

    Durable: a save is acknowledged when it returns. Buffered (`linger_ms`): when a later
    `flush()` returns; a failed flush leaves them buffered (and retried), so only the last
    flush failing makes them unacknowledged.
    """

    def __init__(
        self,
        index: int,
        broker_url: str,
        rate: float,
        seed: str,
        stop: threading.Event,
        *,
        buffered: bool = False,
        producer_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(name=f"soak-producer-{index}", daemon=True)
        self.index = index
        self.saves: list[Save] = []
        self.publish_failures = 0
        self.error: BaseException | None = None
        self._url = broker_url
        self._interval = 1.0 / rate
        self._rng = random.Random(f"{seed}-producer-{index}")
        self._halt = stop
        self.buffered = buffered
        self._unflushed: list[Save] = []
        self._options = dict(producer_options or {})

    def run(self) -> None:
        try:
            options: dict[str, Any] = {"linger_ms": 5} if self.buffered else {}
            options.update(self._options)  # e.g. Sentinel settings
            with Producer(broker_url=self._url, publish_timeout=2.0, **options) as prod:
                self._loop(prod)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc

    def _loop(self, prod: Producer) -> None:
        next_at = time.monotonic()
        seq = 0
        last_flush = time.monotonic()
        while not self._halt.is_set():
            seq += 1
            self._save_one(prod, seq)
            if self.buffered and time.monotonic() - last_flush > 0.5:
                self._flush(prod)
                last_flush = time.monotonic()
            next_at += self._interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._halt.wait(delay)
            elif delay < -1.0:
                next_at = time.monotonic()  # no burst to catch up after an outage
        if self.buffered:
            self._flush(prod, final=True)

    def _flush(self, prod: Producer, *, final: bool = False) -> None:
        try:
            prod.flush(timeout=10.0)
        except PublishError:
            self.publish_failures += 1
            if not final:
                return  # still buffered and retried: a later flush acknowledges them
            self._unflushed = [_unacked(s) for s in self._unflushed]
        self.saves += self._unflushed
        self._unflushed = []

    def _save_one(self, prod: Producer, seq: int) -> None:
        rng, t = self._rng, self.index
        kind = rng.choices(_KINDS, _WEIGHTS)[0]
        base = {"t": t, "n": seq, "pad": rng.choice(_PAD) * rng.randrange(0, 200)}
        version = new_version()  # what `save_*` would assign; the audit needs it
        call: Callable[[], str | None]
        payload: dict[str, Any] | list[dict[str, Any]] = base
        if kind == "state":
            owner, sub = f"agent-{rng.randrange(3)}", f"s{rng.randrange(30)}"
            call = lambda: prod.save_state(owner, sub, base, version=version)  # noqa: E731
        elif kind == "task":
            owner, sub = f"agent-{rng.randrange(3)}", f"t{rng.randrange(30)}"
            call = lambda: prod.save_task(owner, sub, base, version=version)  # noqa: E731
        elif kind == "conversation":
            # One sender per conversation: its send order is its seq order.
            owner, sub = f"conv-{t}-{rng.randrange(4)}", ""
            call = lambda: prod.save_conversation(owner, base, version=version)  # noqa: E731
        else:
            owner, sub = f"case-{t}-{rng.randrange(4)}", ""
            ids = rng.sample(range(25), rng.randrange(1, 4))
            txns = [{"id": f"tx-{i}", **base, "i": n} for n, i in enumerate(ids)]
            if rng.random() < 0.2:  # one without "id": the worker derives it from the op id
                txns.append({**base, "i": len(txns)})
            payload = txns
            call = lambda: prod.save_transactions(owner, txns, version=version)  # noqa: E731
        try:
            op_id = call()
        except PublishError:
            self.publish_failures += 1
            op_id = None
            self._halt.wait(0.1)  # the broker is away; an agent would back off too
        save = Save(kind, owner, sub, version, payload, op_id, t, seq)
        if self.buffered and op_id is not None:
            self._unflushed.append(save)
        else:
            self.saves.append(save)


def _unacked(save: Save) -> Save:
    return Save(
        save.kind, save.owner, save.sub, save.version, save.payload, None, save.thread, save.seq
    )
