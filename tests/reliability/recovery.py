"""How long the system takes to recover from a fault: after each one a marker save is
published (retried while the broker refuses it) and read back from the store."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from producer import Producer, PublishError
from storage.errors import StorageError
from storage.versions import new_version
from tests.reliability.ledger import Save

MARKER = "marker"


@dataclass(frozen=True)
class Recovery:
    """Seconds from a fault's injection until the first publish after it returned, and
    until that save was readable in the store (applied by some worker)."""

    first_publish_s: float
    first_apply_s: float


def summary(recoveries: list[Recovery]) -> tuple[str, str]:
    """'median / max' of the first publishes and of the first applies."""

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} / {max(values):.2f} s" if values else "-"

    return (
        spread([r.first_publish_s for r in recoveries]),
        spread([r.first_apply_s for r in recoveries]),
    )


class Probe:
    """Publishes the marker saves (they join `saves`, for the audit) and times them."""

    def __init__(self, broker_url: str, database: str, timeout: float, **settings: Any) -> None:
        self.saves: list[Save] = []
        self._timeout = timeout
        self._producer = Producer(
            broker_url=broker_url,
            publish_timeout=2.0,
            postgres_connection_string=database,
            **settings,
        )

    def recovery(self, n: int, injected: float, restore: Callable[[], None]) -> Recovery:
        """Publish marker `n`, `restore()` what the fault took away, wait for the marker's
        apply; times counted from `injected` (a `time.monotonic()`)."""
        save = self._publish(n)
        published = time.monotonic() - injected
        restore()
        self._until(f"marker {n} to be applied", lambda: self._applied(save))
        return Recovery(published, time.monotonic() - injected)

    def _publish(self, n: int) -> Save:
        state_id, payload, version = f"after-fault-{n}", {"fault": n}, new_version()
        saved: list[Save] = []

        def published() -> bool:
            try:
                # The same version each try: a try that timed out yet landed is the same save.
                op_id = self._producer.save_state(MARKER, state_id, payload, version=version)
            except PublishError:
                return False  # no primary just now; each try bounded by publish_timeout
            saved.append(Save("state", MARKER, state_id, version, payload, op_id, -1, n))
            return True

        self._until(f"a publish after fault {n}", published)
        self.saves += saved
        return saved[0]

    def _applied(self, save: Save) -> bool:
        try:
            return self._producer.get_state(MARKER, save.sub) is not None
        except StorageError:
            return False  # the store is still away

    def _until(self, what: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self._timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up after {self._timeout:g}s waiting for {what}")
            time.sleep(0.02)

    def close(self) -> None:
        self._producer.close()
