"""Recovery of messages that left the queue and were never confirmed.

Celery's Redis transport loses a message taken by a worker killed before it reached the
`unacked` hash, and messages we take with RPOP never reach it at all; both stay in
`pending`. Every message is published with a sequence number, in queue order, so the
oldest message still queued (`LINDEX agentstore -1`) tells which pending messages have
left the queue: those with a smaller sequence. One still pending `recovery_after_s` after
it was first seen out of the queue, or after the last heartbeat of the worker applying it
(`worker.lease`), is pushed back to the consuming end.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from typing import cast

import redis

from broker import keys

from .metrics import REAPER_REPUBLISHED

log = logging.getLogger(__name__)
_SCAN_TAIL = 100

# Pushes back only what is still pending (a worker may have just confirmed it) and not
# heartbeaten since ARGV[1] (a worker may still be applying it), oldest last, so the oldest
# is consumed first and the queue's tail stays its smallest sequence.
_REPUBLISH = """
local cutoff = tonumber(ARGV[1])
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local since = redis.call('HGET', KEYS[4], id)
  if not since or tonumber(since) <= cutoff then
    if redis.call('ZSCORE', KEYS[1], id) then
      local m = redis.call('HGET', KEYS[2], id)
      if m then
        redis.call('RPUSH', KEYS[3], m)
        n = n + 1
      end
    end
    redis.call('HDEL', KEYS[4], id)
  end
end
return n
"""
# The smallest pending sequence among the queue's last ARGV[1] entries, found inside Redis:
# messages can be megabytes each, and only their header id matters here. Returns "inf" for
# an empty queue and nothing when no tail entry is pending.
_HEAD_SEQ = """
local tail = redis.call('LRANGE', KEYS[1], -tonumber(ARGV[1]), -1)
if #tail == 0 then
  return 'inf'
end
local best = nil
for i = 1, #tail do
  local at = string.find(tail[i], '"headers":{', 1, true)
  local id = at and string.match(tail[i], '"id":"([%w_%-]+)"', at)
  local seq = id and redis.call('ZSCORE', KEYS[2], id)
  if seq and (best == nil or tonumber(seq) < best) then
    best = tonumber(seq)
  end
end
if best == nil then
  return false
end
return tostring(best)
"""
_EXTEND_IF_MINE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class Reaper:
    """Republishes lost messages; `run_once` is one round, serialized across workers."""

    def __init__(
        self,
        client: redis.Redis,
        recovery_after_s: float = 20.0,
        *,
        interval_s: float = 1.0,
        max_per_round: int = 1000,
    ) -> None:
        self._redis = client
        self._after = recovery_after_s
        self._interval_ms = max(1, int(interval_s * 1000))
        self._max = max_per_round
        self._republish = client.register_script(_REPUBLISH)
        self._head = client.register_script(_HEAD_SEQ)
        self._extend = client.register_script(_EXTEND_IF_MINE)

    def run_once(self) -> int:
        """One round if no other worker ran one within the interval; returns messages pushed."""
        token = os.urandom(8).hex()
        # Held across the round (bounded by the long expiry), then left to expire after one
        # interval: the lock both serializes rounds and spaces them out.
        if not self._redis.set(keys.REAPER_LOCK_KEY, token, nx=True, px=60_000):
            return 0
        try:
            return self._round()
        finally:
            self._extend(keys=[keys.REAPER_LOCK_KEY], args=[token, self._interval_ms])

    def _head_seq(self) -> float | None:
        """Smallest sequence still queued; +inf if the queue is empty, None if unknown."""
        found = self._head(keys=[keys.QUEUE, keys.PENDING_KEY], args=[_SCAN_TAIL])
        # None: the tail holds only confirmed duplicates or foreign entries; workers are
        # consuming them now, so decide next round.
        return None if found is None else float(found)

    def _round(self) -> int:
        head = self._head_seq()
        if head is None:
            return 0
        out = cast(
            list[tuple[bytes, float]],
            self._redis.zrangebyscore(
                keys.PENDING_KEY,
                "-inf",
                "+inf" if head == math.inf else f"({head}",
                start=0,
                num=self._max,
                withscores=True,
            ),
        )
        if not out:
            return 0
        now_s, now_us = self._redis.time()
        now = now_s + now_us / 1e6
        ids = [mid for mid, _ in out]
        seen = self._redis.hmget(keys.OUT_SINCE_KEY, ids)
        fresh = {mid: now for mid, since in zip(ids, seen, strict=True) if since is None}
        due = [
            (mid, seq)
            for (mid, seq), since in zip(out, seen, strict=True)
            if since is not None and now - float(since) >= self._after
        ]
        if fresh:
            pipe = self._redis.pipeline(transaction=False)
            for mid, when in fresh.items():
                pipe.hsetnx(keys.OUT_SINCE_KEY, mid, when)
            pipe.execute()
        if not due:
            return 0
        due.sort(key=lambda item: item[1], reverse=True)
        names = [keys.PENDING_KEY, keys.MESSAGES_KEY, keys.QUEUE, keys.OUT_SINCE_KEY]
        cutoff = f"{now - self._after:.6f}"
        pushed = int(self._republish(keys=names, args=[cutoff, *(mid for mid, _ in due)]))
        if pushed:
            REAPER_REPUBLISHED.inc(pushed)
            log.warning("republished %d message(s) lost out of the queue", pushed)
        return pushed


class ReaperThread(threading.Thread):
    """Runs `Reaper.run_once` every interval until `stop()`; errors are logged, never fatal."""

    def __init__(self, reaper: Reaper, interval_s: float) -> None:
        super().__init__(name="agentstore-reaper", daemon=True)
        self._reaper = reaper
        self._interval = interval_s
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self._reaper.run_once()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.debug("reaper: broker unavailable (%s)", type(exc).__name__)
            except Exception:
                log.exception("reaper round failed")

    def stop(self) -> None:
        self._stopped.set()
