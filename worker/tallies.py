"""Counting each message's ops exactly once, SIGKILL or not.

A batch's counts (a `Tally`: ops applied and stale per kind, apply lags, dead letters) are
worked out before its settle and handed to the settle script (`broker/settle.lua`), which
appends them to this worker's list in Redis in the same atomic step, if that settle is the
first for every message of the batch (it found them all pending). The worker's main process
moves them from the list into its counters (`TallyDrain`): at every scrape, and every few
seconds between. A child killed before its settle counted nothing (the redelivery counts);
one killed after it has its counts in Redis already: nothing is lost or counted twice.

A batch holding a redelivered copy of a message settled before, or a message of another
publisher (never pending), is counted by the child itself after the settle, for the
messages that settle was the first for: a child killed just then (between the reply and
its in-memory increments, no I/O) leaves those uncounted. With metrics off, every batch is
counted that way, in memory.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import get_args

import redis
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from broker import keys
from broker.histograms import bucketed, observe_bucketed
from storage.ops import OpName
from storage.records import AnyOp, Outcome

from .metrics import APPLY_LAG, DEAD_LETTERS, OPS_APPLIED, OPS_STALE

log = logging.getLogger(__name__)

# The `kind` label of each op name: what it saves or deletes ("agent" for erase_agent).
KIND_OF: dict[str, str] = {
    name: name.split("_", 1)[1].removesuffix("s") for name in get_args(OpName)
}
_LAG_BOUNDS: list[float] = APPLY_LAG._upper_bounds
# A list nobody drains (its worker is gone) expires; a live worker drains it every few seconds.
LIST_TTL_S = 3600

# One committed part of a batch: its ops as (op, message id), what the store reported for
# each (`StorageBackend.commit`), and when it committed (time.time()).
Committed = tuple[Sequence[tuple[AnyOp, str]], Sequence[Outcome], float]


@dataclass(slots=True)
class Tally:
    """What a settled batch adds to the counters."""

    backend: str = ""
    applied: dict[str, int] = field(default_factory=dict)  # per kind
    stale: dict[str, int] = field(default_factory=dict)  # per kind
    lags: dict[str, tuple[list[int], float]] = field(default_factory=dict)  # kind -> buckets
    dead: dict[str, int] = field(default_factory=dict)  # per reason

    def __bool__(self) -> bool:
        return bool(self.applied or self.stale or self.dead)

    def to_json(self) -> str:
        return json.dumps([self.backend, self.applied, self.stale, self.lags, self.dead])

    @classmethod
    def from_json(cls, text: str | bytes) -> Tally:
        backend, applied, stale, lags, dead = json.loads(text)
        return cls(backend, applied, stale, {k: (c, s) for k, (c, s) in lags.items()}, dead)


def tally(
    backend: str,
    parts: Iterable[Committed],
    published: Mapping[str, float],
    letters: Iterable[tuple[str | None, str]],
    first: Container[str] | None = None,
) -> Tally:
    """What to count of a batch: of its committed `parts`, "new" and "held" ops as applied
    and "stale" ones as stale, with their lags from `published` (their messages' publish
    times); its dead `letters` (message id or None, reason) by reason. With `first`, only
    what belongs to those messages (the ones this settle was the first for), and letters
    of messages without an id (never redelivered)."""
    counts = Tally(backend)
    lags: dict[str, list[float]] = {}
    for ops, outcomes, when in parts:
        for (op, mid), outcome in zip(ops, outcomes, strict=True):
            if first is not None and mid not in first:
                continue
            kind = KIND_OF[op.op]
            if outcome == "stale":
                counts.stale[kind] = counts.stale.get(kind, 0) + 1
                continue
            counts.applied[kind] = counts.applied.get(kind, 0) + 1
            sent = published.get(mid)
            if sent is not None:  # messages of other publishers carry no publish time
                lags.setdefault(kind, []).append(max(when - sent, 0.0))
    counts.lags = {kind: bucketed(_LAG_BOUNDS, values) for kind, values in lags.items()}
    for letter_of, reason in letters:
        if first is None or letter_of is None or letter_of in first:
            counts.dead[reason] = counts.dead.get(reason, 0) + 1
    return counts


def add(counts: Tally) -> None:
    """Add a `Tally` to this process's counters."""
    for kind, count in counts.applied.items():
        OPS_APPLIED.labels(kind, counts.backend).inc(count)
    for kind, count in counts.stale.items():
        OPS_STALE.labels(kind).inc(count)
    for kind, buckets in counts.lags.items():
        observe_bucketed(APPLY_LAG.labels(kind), buckets)
    for reason, count in counts.dead.items():
        DEAD_LETTERS.labels(reason).inc(count)


def dead_lettered(mid: str | None, reason: str, first: Container[str] | None) -> None:
    """Count one dead letter of message `mid` (None: no id), settled with `first` (what
    `broker.deadletters.settle` returned: None if it settled every message first)."""
    add(tally("", (), {}, [(mid, reason)], first))


def list_key(main_pid: int) -> str:
    """The Redis list of the worker whose main process is `main_pid` (on this host)."""
    return f"{keys.TALLIES_PREFIX}{socket.gethostname()}:{main_pid}"


def drain(client: redis.Redis, key: str) -> int:
    """Move every tally of the list `key` into this process's counters; how many."""
    pipe = client.pipeline(transaction=True)
    pipe.lrange(key, 0, -1)
    pipe.delete(key)
    found, _ = pipe.execute()
    for text in found:
        add(Tally.from_json(text))
    return len(found)


class TallyDrain(Collector):
    """Drains the list at each collection, before the counters are read (register it
    first), and from a thread every `interval_s` until `stop()`, so it never grows long."""

    def __init__(self, client: redis.Redis, interval_s: float = 5.0) -> None:
        self._redis = client
        self._key = list_key(os.getpid())
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._interval = interval_s
        threading.Thread(target=self._run, name="agentstore-tallies", daemon=True).start()

    def _drain(self) -> None:
        with self._lock:
            try:
                drain(self._redis, self._key)
            except redis.RedisError as exc:
                log.warning("could not read the batches' counts: %s", type(exc).__name__)

    def collect(self) -> Iterator[Metric]:
        self._drain()
        return iter(())

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            self._drain()

    def stop(self) -> None:
        self._stopped.set()
