"""The periodic retention job every worker process runs: prune the store, one worker at a time."""

from __future__ import annotations

import logging
import random
import secrets
import threading
from collections.abc import Callable

import redis

from broker import keys
from storage.base import StorageBackend
from storage.errors import TransientStorageError
from storage.retention import RetentionPolicy

log = logging.getLogger(__name__)


class PrunerThread(threading.Thread):
    """Calls `store.prune(policy)` about every `interval_s`, at most one worker at a time.

    The lock only saves work: pruning is safe from several processes at once. Each round
    deletes in short bounded batches (see `StorageBackend.prune`), so it never holds long
    locks. The first round waits a random part of the interval, so workers that start
    together do not all try at once.
    """

    def __init__(
        self,
        store: Callable[[], StorageBackend],
        client: redis.Redis,
        policy: RetentionPolicy,
        interval_s: float,
    ) -> None:
        super().__init__(name="agentstore-pruner", daemon=True)
        self._store = store
        self._redis = client
        self._policy = policy
        self._interval = interval_s
        self._stopped = threading.Event()
        self._token = secrets.token_hex(8)

    def run(self) -> None:
        delay = random.uniform(0, self._interval)
        while not self._stopped.wait(delay):
            delay = self._interval
            try:
                self.run_once()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.debug("pruner: broker unavailable (%s)", type(exc).__name__)
            except TransientStorageError as exc:
                log.warning("retention round skipped: %s", str(exc).split("\n", 1)[0][:300])
            except Exception:
                log.exception("retention round failed")

    def run_once(self) -> dict[str, int] | None:
        """One round if no other worker holds the lock; the counts removed, or None."""
        lock_ms = max(1, int(self._interval * 1000))
        if not self._redis.set(keys.PRUNE_LOCK_KEY, self._token, nx=True, px=lock_ms):
            return None
        counts = self._store().prune(self._policy)
        removed = {category: n for category, n in counts.items() if n}
        log.info("retention: removed %s", removed or "nothing")
        return counts

    def stop(self) -> None:
        self._stopped.set()
