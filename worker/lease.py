"""The claim a worker process keeps on the messages it is applying.

The reaper republishes a message that left the queue and has gone unconfirmed for
`AGENTSTORE_RECOVERY_AFTER_S`, counted from `agentstore:out_since`. While a batch is being
applied, this process's heartbeat thread moves that time forward every few seconds, so a
slow batch (a big save, a long delete, a lock wait) is never republished while it runs; a
killed process stops beating and its messages are recovered as before.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from broker import keys

log = logging.getLogger(__name__)

# Redis's clock, as the reaper's; only messages still pending, so a confirmation that
# overtook this heartbeat leaves nothing behind.
_REFRESH = """
local t = redis.call('TIME')
local now = string.format('%d.%06d', t[1], t[2])
for i = 1, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('HSET', KEYS[2], ARGV[i], now)
  end
end
return 0
"""
# A batch shorter than this costs no heartbeat at all.
_FIRST_BEAT_S = 0.2


class Heartbeat(threading.Thread):
    """Refreshes the lease of the message ids `hold` was given until `release`."""

    def __init__(self, client: redis.Redis, recovery_after_s: float) -> None:
        super().__init__(name="agentstore-heartbeat", daemon=True)
        # Four beats per recovery period: one lost or late beat never lets a lease lapse.
        self._interval = min(recovery_after_s / 4, 5.0)
        self._refresh = client.register_script(_REFRESH)
        self._cond = threading.Condition()
        self._ids: list[str] = []
        self._next_beat = 0.0
        self._stopped = False

    def hold(self, message_ids: list[str]) -> None:
        """Keep these ids (a list the caller may still append to) leased from now on."""
        with self._cond:
            self._ids = message_ids
            self._next_beat = time.monotonic() + min(_FIRST_BEAT_S, self._interval)
            self._cond.notify()

    def release(self) -> None:
        with self._cond:
            self._ids = []

    def run(self) -> None:
        with self._cond:
            while not self._stopped:
                if not self._ids:
                    self._cond.wait()
                    continue
                wait = self._next_beat - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                ids = list(self._ids)
                self._next_beat = time.monotonic() + self._interval
                self._cond.release()
                try:
                    self._beat(ids)
                finally:
                    self._cond.acquire()

    def _beat(self, ids: list[str]) -> None:
        try:
            self._refresh(keys=[keys.PENDING_KEY, keys.OUT_SINCE_KEY], args=ids)
        except redis.RedisError as exc:
            # The next beat tries again; if the broker stays away, so does the reaper.
            log.debug("heartbeat: broker unavailable (%s)", type(exc).__name__)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
