"""Resumable store-to-store migration: copy tombstones and every kind page by page,
checkpoint, count-check.

The checkpoint records, per kind, the last source row id whose page is committed on the
target. Re-running resumes after it; a page copied twice (killed between the write and the
checkpoint) is harmless, because writes are idempotent and versions travel.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from storage import backends
from storage.base import StorageBackend
from storage.config import Settings
from storage.errors import ConfigError
from storage.records import STREAM_KINDS, StreamKind

from .progress import NoProgress, Progress
from .transfer import (
    DEFAULT_PAGE_SIZE,
    TransferError,
    count_records,
    scan_pages,
    write_page,
)

T = TypeVar("T")
CHECKPOINT_FORMAT = 1
CHECKPOINT_DIR = Path(".agentstore")
# Pages read ahead of the one being written: reads overlap writes, memory stays bounded.
READ_AHEAD = 2


@dataclass
class KindCheck:
    """The count check of one kind after a migration."""

    kind: StreamKind
    source: int
    target: int
    target_before: int

    @property
    def ok(self) -> bool:
        # Every source record is on the target; beyond those only what was there before.
        return self.source <= self.target <= self.source + self.target_before

    def __str__(self) -> str:
        before = f" ({self.target_before:,} before)" if self.target_before else ""
        verdict = "OK" if self.ok else "MISMATCH"
        counts = f"source {self.source:>10,}  target {self.target:>10,}{before}"
        return f"{self.kind:<12} {counts}  {verdict}"


@dataclass
class Checkpoint:
    """Migration progress on disk; written atomically after every committed page."""

    path: Path
    migration: str
    source: str
    target: str
    target_before: dict[str, int] | None = None
    kinds: dict[str, dict[str, Any]] = field(default_factory=dict)
    resumed: bool = False

    @classmethod
    def load(cls, path: Path, migration: str, source: str, target: str) -> Checkpoint | None:
        """The checkpoint at `path` for this migration, or None if there is none."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise TransferError(
                f"checkpoint {path} is unreadable ({exc}); use --restart to start over"
            ) from None
        if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
            raise TransferError(f"checkpoint {path} has an unknown format; use --restart")
        if raw.get("migration") != migration:
            raise TransferError(
                f"checkpoint {path} belongs to another migration ({raw.get('source')} -> "
                f"{raw.get('target')}); use another --checkpoint, or --restart to overwrite it"
            )
        return cls(
            path, migration, source, target, raw.get("target_before"), raw["kinds"], resumed=True
        )

    def kind(self, kind: StreamKind) -> dict[str, Any]:
        return self.kinds.setdefault(kind, {"after": None, "copied": 0, "done": False})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "format": CHECKPOINT_FORMAT,
            "migration": self.migration,
            "source": self.source,
            "target": self.target,
            "target_before": self.target_before,
            "kinds": self.kinds,
        }
        # Write then rename: a kill mid-write leaves the previous checkpoint, never half a file.
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(body, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def migration_id(source: Settings, target: Settings) -> str:
    """A short stable name for this source/target pair (from their identities, no secrets)."""
    both = json.dumps([backends.identity(source), backends.identity(target)])
    return hashlib.sha256(both.encode()).hexdigest()[:16]


def plan_migration(
    source: Settings, target: Settings, checkpoint: Path | None = None, restart: bool = False
) -> Checkpoint:
    """Check the pair and load (or start) its checkpoint; opens no connection.

    Raises `TransferError` if source and target are the same store, and `ConfigError` if
    the target configures no store.
    """
    if backends.chosen(target) is None:
        raise ConfigError(f"the target file configures no store: {backends.how_to_configure()}")
    src, tgt = backends.describe(source), backends.describe(target)
    if backends.identity(source) == backends.identity(target):
        raise TransferError(f"source and target are the same store ({src}); refusing to migrate")
    mid = migration_id(source, target)
    path = checkpoint or CHECKPOINT_DIR / f"migrate-{mid}.json"
    if not restart:
        return Checkpoint.load(path, mid, src, tgt) or Checkpoint(path, mid, src, tgt)
    fresh = Checkpoint(path, mid, src, tgt)
    # Starting over keeps what the target held before the first run: the partial copy
    # since then is ours, not the target's own data, and must not loosen the count check.
    with contextlib.suppress(TransferError):
        earlier = Checkpoint.load(path, mid, src, tgt)
        fresh.target_before = earlier.target_before if earlier else None
    return fresh


def read_ahead(items: Iterator[T], depth: int = READ_AHEAD) -> Iterator[T]:
    """Iterate `items` in a background thread, at most `depth` items ahead of the consumer."""
    slots: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[int, Any]) -> bool:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                slots.put(entry, timeout=0.1)
                return True
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((0, item)):
                    return
            put((1, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            put((2, exc))

    thread = threading.Thread(target=produce, name="agentstore-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            tag, value = slots.get()
            if tag == 1:
                return
            if tag == 2:
                raise value
            yield value
    finally:
        # The consumer stopped (done, failed or interrupted): let the reader finish its page.
        stop.set()
        thread.join(timeout=30)


def count_both(source: StorageBackend, target: StorageBackend, kind: StreamKind) -> tuple[int, int]:
    """`(source count, target count)` of `kind`, both scanned at the same time."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="agentstore-count") as pool:
        src = pool.submit(count_records, source, kind)
        tgt = pool.submit(count_records, target, kind)
        return src.result(), tgt.result()


def migrate_stores(
    source: StorageBackend,
    target: StorageBackend,
    checkpoint: Checkpoint,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
    progress: Progress | None = None,
    totals: Callable[[StreamKind], int | None] = lambda kind: None,
    note: Callable[[str], None] = lambda text: None,
) -> list[KindCheck]:
    """Copy partition tombstones and all four kinds from `source` to `target`, then count
    both sides per kind (tombstones included).

    Resumes from `checkpoint`; removes it once the count check passes. A check that fails
    keeps it, and the next run copies everything again (idempotently) and checks again.
    """
    progress = progress or NoProgress()
    if checkpoint.target_before is None:
        note("counting what the target holds before the migration")
        checkpoint.target_before = {
            kind: count_records(target, kind, max(page_size, 1000)) for kind in STREAM_KINDS
        }
        checkpoint.save()
    elif all(checkpoint.kind(kind)["done"] for kind in STREAM_KINDS):
        note(f"the last run of {checkpoint.path} finished its copy; copying everything again")
        checkpoint.kinds = {}
    elif checkpoint.resumed:
        note(f"resuming from checkpoint {checkpoint.path}")
    for kind in STREAM_KINDS:
        state = checkpoint.kind(kind)
        if state["done"]:
            note(f"{kind}: already copied ({state['copied']:,} records)")
            continue
        progress.start(kind, totals(kind), initial=state["copied"])
        try:
            for page in read_ahead(scan_pages(source, kind, page_size, state["after"])):
                write_page(target, page)
                state["after"] = page[-1].row_id
                state["copied"] += len(page)
                checkpoint.save()
                progress.advance(len(page))
        finally:
            progress.finish()  # also when interrupted: the line shows how far it got
        state["done"] = True
        checkpoint.save()
    note("count check: scanning both stores")
    checks = []
    for kind in STREAM_KINDS:
        src, tgt = count_both(source, target, kind)
        checks.append(KindCheck(kind, src, tgt, checkpoint.target_before.get(kind, 0)))
    if all(check.ok for check in checks):
        checkpoint.remove()
    return checks
