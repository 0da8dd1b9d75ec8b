"""Dead letters: ops (and whole messages) the worker could not apply, kept in Redis until
replayed or purged. The worker stores them (`settle`), the CLI manages them (`DeadLetters`)
and the producer's `wait()` reads the same hash.

Layout: hash `agentstore:dlq` id -> JSON record, zset `agentstore:dlq:index` id -> time of
the last failure. A record is `{op, error, attempts, first_failure, last_failure,
message_id}` keyed by op id, plus `trace` (the save's trace context, whose `traceparent`
holds the trace id) if the save was traced; a malformed message is keyed by its message
id and has `raw` (at most 64 KB of it) instead of `op`.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal, cast

import redis

from storage.config import load_settings
from storage.errors import ValidationError
from storage.ops import parse_op

from . import keys, scripts, tracing, wire
from .connection import connect
from .publisher import Publisher

MAX_RAW_BYTES = 64 * 1024
_MAX_ERROR_CHARS = 2000

_REMOVE_IF_SAME = scripts.load("remove_if_same")


def op_record(
    op: Any,
    error: str,
    attempts: int,
    first: float,
    last: float,
    message_id: str | None,
    trace: tracing.Carrier | None = None,
) -> tuple[str, str]:
    """`(op id, record JSON)` for a failed op; `op` is its wire dict as received, `trace`
    its save's trace context, if any."""
    op_id = op.get("id") if isinstance(op, dict) else None
    if not isinstance(op_id, str) or not op_id or len(op_id) > 64:
        digest = hashlib.sha256(json.dumps(op, sort_keys=True, default=str).encode()).hexdigest()
        op_id = f"op-{digest[:32]}"
    record = {
        "op": op,
        "error": error[:_MAX_ERROR_CHARS],
        "attempts": attempts,
        "first_failure": first,
        "last_failure": last,
        "message_id": message_id,
    }
    if trace is not None:
        record["trace"] = trace
    return op_id, json.dumps(record, default=str)


def message_record(
    raw: bytes | str, reason: str, message_id: str | None, when: float
) -> tuple[str, str]:
    """`(key, record JSON)` for a whole message we refused; keyed by its id or content hash."""
    data = raw.encode("utf-8", "replace") if isinstance(raw, str) else raw
    key = message_id or f"msg-{hashlib.sha256(data).hexdigest()[:32]}"
    record = {
        "op": None,
        "raw": data[:MAX_RAW_BYTES].decode("utf-8", "replace"),
        "raw_bytes": len(data),
        "error": reason[:_MAX_ERROR_CHARS],
        "attempts": 1,
        "first_failure": when,
        "last_failure": when,
        "message_id": message_id,
    }
    return key, json.dumps(record)


def add(pipe: redis.client.Pipeline, key: str, record: str, when: float) -> None:
    """Queue the commands that store one dead letter on `pipe`."""
    pipe.hset(keys.DLQ_KEY, key, record)
    pipe.zadd(keys.DLQ_INDEX_KEY, {key: when})


_SETTLE = scripts.load("settle")
_SETTLE_KEYS = [
    keys.PENDING_KEY,
    keys.MESSAGES_KEY,
    keys.OUT_SINCE_KEY,
    keys.DLQ_KEY,
    keys.DLQ_INDEX_KEY,
    keys.DONE_KEY,
    keys.APPLIED_KEY,
]


def settle(
    client: redis.Redis,
    message_ids: Iterable[str],
    dead: Iterable[tuple[str, str, float]] = (),
    *,
    applied: Mapping[str, int] | None = None,
    confirm_ttl_s: float = 600.0,
    tally: tuple[str, str, int] | None = None,
) -> set[str] | None:
    """Mark messages done (never republished, confirmed for `wait()`), store their dead
    letters `(key, record JSON, failure time)` and count `applied` ops (per message id):
    one round trip.

    Returns None if this call is the first settle of every message (the common case);
    else the ids it settled first, of which it counts the ops then, with a second call (a
    redelivered copy of a message settled before counts nothing). `tally` (list key, text,
    ttl in s) is appended to that list only in the first case (`worker.tallies`).
    """
    mids = builtins.list(dict.fromkeys(message_ids))
    counts = applied or {}
    tally_key, tally_text, tally_ttl = tally or (keys.TALLIES_PREFIX, "", 0)
    args: builtins.list[str | float | int] = [
        len(mids),
        time.time(),
        confirm_ttl_s,
        sum(counts.get(mid, 0) for mid in mids),
        tally_text,
        tally_ttl,
    ]
    args += mids
    for key, record, when in dead:
        args += (key, record, when)
    flags = client.register_script(_SETTLE)(keys=[*_SETTLE_KEYS, tally_key], args=args)
    if not isinstance(flags, bytes | str):
        return None
    text = flags.decode() if isinstance(flags, bytes) else flags
    first = {mid for mid, flag in zip(mids, text, strict=True) if flag == "1"}
    ops = sum(counts.get(mid, 0) for mid in first)
    if ops:
        client.incrby(keys.APPLIED_KEY, ops)
    return first


class DeadLetters:
    """List, inspect, replay and purge dead letters.

    Args:
        broker_url: the Redis broker; `CELERY_BROKER_URL` (via `load_settings`) if omitted.
        client: an existing redis-py client to use instead.
    """

    def __init__(self, broker_url: str | None = None, *, client: redis.Redis | None = None) -> None:
        self._url = broker_url or load_settings().celery_broker_url.get_secret_value()
        self._redis = client or connect(self._url, 5.0)
        self._publisher: Publisher | None = None

    def count(self) -> int:
        """How many dead letters there are."""
        return int(self._redis.hlen(keys.DLQ_KEY))

    def list(self, limit: int = 100, offset: int = 0) -> builtins.list[dict[str, Any]]:
        """Records oldest failure first, each with its `id`."""
        ids = cast(
            builtins.list[bytes],
            self._redis.zrange(keys.DLQ_INDEX_KEY, offset, offset + limit - 1),
        )
        if not ids:
            return []
        raws = self._redis.hmget(keys.DLQ_KEY, ids)
        return [
            {"id": k.decode(), **json.loads(raw)}
            for k, raw in zip(ids, raws, strict=True)
            if raw is not None
        ]

    def get(self, op_id: str) -> dict[str, Any] | None:
        """The record of one op id (or malformed message id), or None."""
        raw = self._redis.hget(keys.DLQ_KEY, op_id)
        return None if raw is None else {"id": op_id, **json.loads(raw)}

    def _select(self, ids: Iterable[str] | Literal["all"]) -> builtins.list[tuple[str, bytes]]:
        if not isinstance(ids, str):
            ids = builtins.list(ids)
            if not ids:
                return []
        if ids == "all":
            everything = cast(dict[bytes, bytes], self._redis.hgetall(keys.DLQ_KEY))
            return [(k.decode(), v) for k, v in everything.items()]
        wanted = builtins.list(dict.fromkeys(ids))
        found = cast(builtins.list[bytes | None], self._redis.hmget(keys.DLQ_KEY, wanted))
        return [(k, v) for k, v in zip(wanted, found, strict=True) if v is not None]

    def replay(self, ids: Iterable[str] | Literal["all"]) -> int:
        """Republish dead-lettered ops with their op id and version; remove them when queued.

        Malformed messages cannot be replayed and stay. Returns how many ops were queued.
        """
        batch: builtins.list[tuple[str, bytes]] = []
        removed: builtins.list[str | bytes] = []
        for key, raw in self._select(ids):
            record = json.loads(raw)
            op = record.get("op")
            if op is None:
                continue
            try:
                op_json = parse_op(op).model_dump_json()
            except ValidationError:
                # Still invalid: republishing it would only dead-letter it again, but the
                # user asked, and a validation rule may have been relaxed since.
                op_json = json.dumps(op)
            # The op id as message id: `Producer.wait([op_id])` follows the replay too.
            mid = key if wire.is_message_id(key) else wire.new_message_id()
            # The save's trace context goes along: the replay's batch links to the save.
            trace = tracing.carriers_of([record.get("trace")], 1)
            batch.append((mid, wire.build_message(mid, [op_json], trace)))
            removed += (key, raw)
        if not batch:
            return 0
        if self._publisher is None:
            self._publisher = Publisher(self._url)
        for start in range(0, len(batch), 500):
            self._publisher.publish(batch[start : start + 500])
        self._redis.eval(_REMOVE_IF_SAME, 2, keys.DLQ_KEY, keys.DLQ_INDEX_KEY, *removed)
        return len(batch)

    def purge(self, ids: Iterable[str] | Literal["all"]) -> int:
        """Delete dead letters for good; returns how many were deleted."""
        found = [k for k, _ in self._select(ids)]
        if not found:
            return 0
        pipe = self._redis.pipeline()
        for start in range(0, len(found), 1000):
            pipe.hdel(keys.DLQ_KEY, *found[start : start + 1000])
            pipe.zrem(keys.DLQ_INDEX_KEY, *found[start : start + 1000])
        pipe.execute()
        return len(found)

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
        self._redis.close()
