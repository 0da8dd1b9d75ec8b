"""Typed reads of what the broker holds, and of the op ids a Producer's saves return."""

from __future__ import annotations

from typing import cast

import redis

from broker import keys, wire


def op_id_of(saved: str | None) -> str:
    """The op id a `Producer.save_*` returned; typed `str | None` by the `StorageClient`
    contract, whose direct stores return None."""
    assert isinstance(saved, str), f"a Producer's save returns its op id, got {saved!r}"
    return saved


def pending_ids(client: redis.Redis) -> list[str]:
    """Message ids published and not yet confirmed, oldest first."""
    return [mid.decode() for mid in cast(list[bytes], client.zrange(keys.PENDING_KEY, 0, -1))]


def pop_message(client: redis.Redis) -> wire.Message:
    """Take the next message off the queue, as a worker does."""
    raw = client.rpop(keys.QUEUE)
    assert isinstance(raw, bytes), f"a message in the queue, got {raw!r}"
    return wire.parse_message(raw)
