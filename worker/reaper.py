"""Recovery of messages that left the queue and were never confirmed.

Celery's Redis transport loses a message taken by a worker killed before it reached the
`unacked` hash, and messages we take with RPOP never reach it at all; both stay in
`pending`. Every message is published with a sequence number, in queue order, so the
oldest message still queued (`LINDEX agentstore -1`) tells which pending messages have
left the queue: those with a smaller sequence. One still pending `recovery_after_s` after
it was first seen out of the queue, or after the last heartbeat of the worker applying it
(`worker.lease`), is pushed back to the consuming end.

A round starts every `interval_s` and goes through every message out of the queue, however
many, in chunks of `chunk` per Redis call: it marks those it sees out for the first time and
pushes back those overdue. So a message lost in a crash is marked within one interval and
pushed back within one interval of being overdue: `recovery_after_s` + 2 intervals after
the crash (while a worker runs), whether one message was lost or a hundred thousand.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import redis

from broker import keys

from .metrics import REAPER_REPUBLISHED

log = logging.getLogger(__name__)
_SCAN_TAIL = 100

# One chunk of a round: up to ARGV[2] pending messages with a sequence below ARGV[1], the
# newest first. One not seen out of the queue before is marked with Redis's time; one out
# (or heartbeaten) at least ARGV[3] s ago is pushed back. Pushed newest first, chunk after
# chunk going down, so the queue's tail stays its smallest sequence and the oldest is
# consumed first. Returns {pushed, scanned, smallest sequence scanned}; {0, 0} if another
# round holds the lock (ARGV[4] is ours), which each chunk otherwise renews for ARGV[5] ms.
_SWEEP = """
local holder = redis.call('GET', KEYS[5])
if holder and holder ~= ARGV[4] then
  return {0, 0}
end
redis.call('SET', KEYS[5], ARGV[4], 'PX', ARGV[5])
local t = redis.call('TIME')
local now = string.format('%d.%06d', t[1], t[2])
local cutoff = tonumber(now) - tonumber(ARGV[3])
local out = redis.call('ZREVRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '-inf',
  'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local n = 0
for i = 1, #out, 2 do
  local id = out[i]
  local since = redis.call('HGET', KEYS[4], id)
  if not since then
    redis.call('HSET', KEYS[4], id, now)
  elseif tonumber(since) <= cutoff then
    local m = redis.call('HGET', KEYS[2], id)
    if m then
      redis.call('RPUSH', KEYS[3], m)
      n = n + 1
    end
    redis.call('HDEL', KEYS[4], id)
  end
end
return {n, #out / 2, out[#out]}
"""
# The smallest pending sequence among the queue's last ARGV[1] entries, found inside Redis:
# messages can be megabytes each, and only their header id matters here. Returns "inf" for
# an empty queue and nothing when no tail entry is pending. One LINDEX per entry, not an
# LRANGE of them all (converting that reply for Lua cost Redis ~75 ms per round over a
# queue of 500-op messages, vs ~25), and the headers looked for near the end first (ours
# follow the body) instead of scanning every body.
_HEAD_SEQ = """
local best = nil
for i = 1, tonumber(ARGV[1]) do
  local m = redis.call('LINDEX', KEYS[1], -i)
  if not m then
    if i == 1 then
      return 'inf'
    end
    break
  end
  local at = string.find(m, '"headers":{', -4096, true) or string.find(m, '"headers":{', 1, true)
  local id = at and string.match(m, '"id":"([%w_%-]+)"', at)
  local seq = id and redis.call('ZSCORE', KEYS[2], id)
  if seq and (best == nil or tonumber(seq) < best) then
    best = tonumber(seq)
  end
end
if best == nil then
  return false
end
return string.format('%d', best)
"""
# Sets the lock's expiry if this round still holds it; 0 ms deletes it.
_RELEASE_AFTER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if tonumber(ARGV[2]) > 0 then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
  return redis.call('DEL', KEYS[1])
end
return 0
"""
_KEYS = [
    keys.PENDING_KEY,
    keys.MESSAGES_KEY,
    keys.QUEUE,
    keys.OUT_SINCE_KEY,
    keys.REAPER_LOCK_KEY,
]


class Reaper:
    """Republishes lost messages; `run_once` is one round, serialized across workers."""

    def __init__(
        self,
        client: redis.Redis,
        recovery_after_s: float = 20.0,
        *,
        interval_s: float = 1.0,
        chunk: int = 1000,
    ) -> None:
        self._redis = client
        self._after = recovery_after_s
        self._interval_s = interval_s
        self._interval_ms = max(1, int(interval_s * 1000))
        self._chunk = chunk
        self._sweep = client.register_script(_SWEEP)
        self._head = client.register_script(_HEAD_SEQ)
        self._release = client.register_script(_RELEASE_AFTER)

    def run_once(self) -> int:
        """One round if no other worker started one within the interval; returns messages
        pushed back."""
        token = os.urandom(8).hex()
        started = time.monotonic()
        # Held across the round, each chunk renewing it for one interval, so a worker killed
        # mid-round holds up the others for one interval at most; then held until one
        # interval after the round began: the lock serializes rounds and spaces their starts.
        if not self._redis.set(keys.REAPER_LOCK_KEY, token, nx=True, px=self._interval_ms):
            return 0
        try:
            return self._round(token)
        finally:
            left_ms = int((self._interval_s - (time.monotonic() - started)) * 1000)
            self._release(keys=[keys.REAPER_LOCK_KEY], args=[token, max(0, left_ms)])

    def next_round_in(self) -> float:
        """Seconds until the next round may start (when the lock expires), at most one
        interval: a worker that waits this long never misses its turn by a whole interval."""
        left_ms = int(self._redis.pttl(keys.REAPER_LOCK_KEY))
        if left_ms == -1:  # a lock without expiry was set by hand: no round ever sets one
            return self._interval_s
        return min(max(left_ms, 1) / 1000, self._interval_s)

    def _round(self, token: str) -> int:
        head = self._head(keys=[keys.QUEUE, keys.PENDING_KEY], args=[_SCAN_TAIL])
        if head is None:
            # The tail holds only confirmed duplicates or foreign entries; workers are
            # consuming them now, so decide next round.
            return 0
        below: bytes | str = head
        pushed = 0
        after = f"{self._after:.6f}"
        while True:
            found = self._sweep(
                keys=_KEYS, args=[below, self._chunk, after, token, self._interval_ms]
            )
            pushed += int(found[0])
            if int(found[1]) < self._chunk:
                break
            below = found[2]
        if pushed:
            REAPER_REPUBLISHED.inc(pushed)
            log.warning("republished %d message(s) lost out of the queue", pushed)
        return pushed


class ReaperThread(threading.Thread):
    """Runs `Reaper.run_once` each time the round lock lets it until `stop()`; errors are
    logged, never fatal."""

    def __init__(self, reaper: Reaper, interval_s: float) -> None:
        super().__init__(name="agentstore-reaper", daemon=True)
        self._reaper = reaper
        self._interval = interval_s
        self._stopped = threading.Event()

    def run(self) -> None:
        wait = self._interval
        while not self._stopped.wait(wait):
            wait = self._interval
            try:
                self._reaper.run_once()
                wait = self._reaper.next_round_in()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.debug("reaper: broker unavailable (%s)", type(exc).__name__)
            except Exception:
                log.exception("reaper round failed")

    def stop(self) -> None:
        self._stopped.set()
