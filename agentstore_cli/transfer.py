"""Export, import and migration: records streamed page by page between stores and JSON Lines.

Every step reads with `scan_records` (keyset pages in row id order) and writes with
`write_records(dedupe(page))`. Records carry their version and position, so writing one twice
is a no-op: an interrupted import or migration is finished by running it again.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, cast

from dotenv import dotenv_values

from storage.base import StorageBackend
from storage.config import Settings, load_settings, mask_url
from storage.errors import ConfigError, StorageError, ValidationError
from storage.factory import create_storage_client
from storage.ids import check_id
from storage.payload import encode_payload
from storage.records import KINDS, Kind, Record, dedupe
from storage.versions import VERSION_RE

DEFAULT_PAGE_SIZE = 500
FIELDS = ("kind", "row_id", "partition", "sub_id", "data", "version", "position", "deleted")
# Files written before deletes existed have no "deleted": their records are all live.
_OPTIONAL = {"deleted": False}
# Only for progress totals; the count check scans instead, through the storage contract.
_PG_TABLES: dict[Kind, str] = {
    "state": "agent_states",
    "task": "agent_tasks",
    "conversation": "conversations",
    "transaction": "transactions",
}


class TransferError(Exception):
    """An export, import or migration cannot go on; the message says why and what to do."""


class BadLine(TransferError):
    """A line of an import file is not a valid record."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason
        self.written = 0  # records of earlier pages already written when this line failed


class Progress(Protocol):
    """Receives progress for one kind at a time."""

    def start(self, label: str, total: int | None, initial: int = 0) -> None: ...

    def advance(self, rows: int) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    """Progress that shows nothing."""

    def start(self, label: str, total: int | None, initial: int = 0) -> None:
        pass

    def advance(self, rows: int) -> None:
        pass

    def finish(self) -> None:
        pass


class LineProgress:
    """One line per kind on `stream`: rows, rate and (with a total) ETA.

    On a terminal the line is redrawn in place; elsewhere only the final line is written, so
    logs get one summary per kind instead of a stream of carriage returns.
    """

    def __init__(self, stream: IO[str] | None = None, tty: bool | None = None) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._label, self._rows, self._initial = "", 0, 0
        self._total: int | None = None
        self._began = self._drawn = 0.0

    def start(self, label: str, total: int | None, initial: int = 0) -> None:
        """Begin a line; `initial` rows were done by an earlier run and count for no rate."""
        self._label, self._total, self._rows, self._initial = label, total, initial, initial
        self._began = time.monotonic()
        self._drawn = 0.0
        if self._tty:
            self._draw()

    def advance(self, rows: int) -> None:
        self._rows += rows
        # Redraw at most ten times a second: a terminal write per page would slow small pages.
        if self._tty and time.monotonic() - self._drawn >= 0.1:
            self._draw()

    def finish(self) -> None:
        if self._tty:
            self._draw()
        self._stream.write(("" if self._tty else self._text()) + "\n")
        self._stream.flush()

    def _text(self) -> str:
        elapsed = max(time.monotonic() - self._began, 1e-9)
        rate = (self._rows - self._initial) / elapsed
        if self._total is None:
            return f"{self._label:<12} {self._rows:>10,} rows  {rate:>9,.0f}/s  {elapsed:6.1f} s"
        left = max(self._total - self._rows, 0)
        eta = _clock(left / rate) if rate > 0 and left else "--:--" if left else "done"
        pct = min(100.0 * self._rows / self._total, 100.0) if self._total else 100.0
        filled = int(pct / 5)
        bar = "#" * filled + "-" * (20 - filled)
        return (
            f"{self._label:<12} [{bar}] {self._rows:>10,}/{self._total:,} rows ({pct:5.1f}%)  "
            f"{rate:>9,.0f}/s  ETA {eta}"
        )

    def _draw(self) -> None:
        self._drawn = time.monotonic()
        self._stream.write("\r\x1b[K" + self._text())
        self._stream.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def parse_kinds(text: str) -> tuple[Kind, ...]:
    """`"state,task"` -> `("state", "task")` in the canonical order; raises on unknown names."""
    names = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(names - set(KINDS))
    if unknown or not names:
        raise ValueError(f"unknown kind(s) {', '.join(unknown) or '(none)'}; use {','.join(KINDS)}")
    return tuple(kind for kind in KINDS if kind in names)


def scan_pages(
    store: StorageBackend, kind: Kind, page_size: int, after: str | None = None
) -> Iterator[list[Record]]:
    """Every record of `kind` with row id > `after`, one page of at most `page_size` at a time."""
    while page := store.scan_records(kind, after=after, limit=page_size):
        yield page
        after = page[-1].row_id


def count_records(store: StorageBackend, kind: Kind, page_size: int = 1000) -> int:
    """How many records of `kind` the store holds, counted by scanning all of them."""
    return sum(len(page) for page in scan_pages(store, kind, page_size))


def quick_count(settings: Settings, kind: Kind) -> int | None:
    """A cheap record count for progress totals: PostgreSQL's `count(*)`, else None."""
    secret = settings.postgres_connection_string
    if secret is None or settings.agentstore_backend not in (None, "postgres"):
        return None
    import psycopg2

    try:
        conn = psycopg2.connect(secret.get_secret_value(), connect_timeout=5)
    except psycopg2.Error:
        return None
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {_PG_TABLES[kind]}")
            row = cur.fetchone()
            return int(row[0]) if row else None
    except psycopg2.Error:
        return None
    finally:
        conn.close()


# -- JSON Lines -----------------------------------------------------------------------------


def record_line(rec: Record) -> bytes:
    """One record as a JSON Lines line (UTF-8, with its newline)."""
    obj = {name: getattr(rec, name) for name in FIELDS}
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def parse_line(raw: bytes | str, line: int) -> Record:
    """Validate one line into a `Record`; raise `BadLine` saying what is wrong and where."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        obj = json.loads(text)
    except UnicodeDecodeError:
        raise BadLine(line, "not valid UTF-8") from None
    except ValueError as exc:
        raise BadLine(line, f"not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise BadLine(line, f"expected a JSON object, got {type(obj).__name__}")
    obj = {**_OPTIONAL, **obj}
    missing = [name for name in FIELDS if name not in obj]
    extra = sorted(set(obj) - set(FIELDS))
    if missing or extra:
        what = [f"missing {', '.join(missing)}"] if missing else []
        what += [f"unknown {', '.join(map(repr, extra))[:200]}"] if extra else []
        raise BadLine(line, f"fields: {'; '.join(what)} (expected {', '.join(FIELDS)})")
    kind = obj["kind"]
    if kind not in KINDS:
        raise BadLine(line, f"kind must be one of {', '.join(KINDS)}, got {str(kind)[:40]!r}")
    try:
        for name in ("row_id", "partition", "sub_id"):
            check_id(name, obj[name])
        encode_payload("data", obj["data"])
    except ValidationError as exc:
        raise BadLine(line, str(exc)) from None
    for name in ("version", "position"):
        value = obj[name]
        if not isinstance(value, str) or not value or len(value) > 255 or "\x00" in value:
            raise BadLine(line, f"{name} must be a non-empty string of at most 255 characters")
    if not VERSION_RE.match(obj["version"]):
        raise BadLine(line, "version must be 1-64 characters from [0-9A-Za-z._:-]")
    if not isinstance(obj["deleted"], bool):
        raise BadLine(line, "deleted must be true or false")
    return Record(
        cast(Kind, kind),
        obj["row_id"],
        obj["partition"],
        obj["data"],
        obj["version"],
        obj["position"],
        obj["sub_id"],
        obj["deleted"],
    )


def export_records(
    store: StorageBackend,
    out: IO[bytes],
    kinds: Iterable[Kind] = KINDS,
    page_size: int = DEFAULT_PAGE_SIZE,
    progress: Progress | None = None,
    totals: Callable[[Kind], int | None] = lambda kind: None,
) -> dict[Kind, int]:
    """Write every record of `kinds` to `out` as JSON Lines; returns the count per kind.

    Holds one page in memory at a time, whatever the size of the store.
    """
    progress = progress or NoProgress()
    written: dict[Kind, int] = {}
    for kind in kinds:
        written[kind] = 0
        progress.start(kind, totals(kind))
        for page in scan_pages(store, kind, page_size):
            out.write(b"".join(record_line(rec) for rec in page))
            written[kind] += len(page)
            progress.advance(len(page))
        progress.finish()
    out.flush()
    return written


@dataclass
class ImportResult:
    """What an import read and wrote."""

    lines: int = 0
    records: int = 0
    per_kind: dict[Kind, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))


def import_records(
    store: StorageBackend | None,
    lines: Iterable[bytes | str],
    page_size: int = DEFAULT_PAGE_SIZE,
    progress: Progress | None = None,
) -> ImportResult:
    """Validate and write JSON Lines records, `page_size` records per `write_records` call.

    A page is validated whole before it is written, so a bad line stops the import with
    nothing of its page written; the pages before it stay written (`BadLine.written` says
    how many records). Writes are idempotent: after fixing the line, import the same file
    again. With `store=None` nothing is written (a dry run that validates every line).
    """
    progress = progress or NoProgress()
    result = ImportResult()
    page: list[Record] = []

    def flush() -> None:
        if page and store is not None:
            store.write_records(dedupe(page))
        result.records += len(page)
        for rec in page:
            result.per_kind[rec.kind] += 1
        progress.advance(len(page))
        page.clear()

    progress.start("import" if store is not None else "check", None)
    number = 0
    try:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue  # blank lines (a trailing newline, an editor's) carry nothing
            page.append(parse_line(raw, number))
            if len(page) >= page_size:
                flush()
        flush()
    except BadLine as exc:
        exc.written = result.records if store is not None else 0
        raise
    finally:
        progress.finish()
    result.lines = number
    return result


# -- migration ------------------------------------------------------------------------------


def target_settings(env_file: str | os.PathLike[str]) -> Settings:
    """Settings read from `env_file` alone: nothing from the environment or `.env` leaks in.

    A field the file does not set takes its default, so a source configured through
    `POSTGRES_CONNECTION_STRING` cannot make a Cosmos DB target file into a PostgreSQL one.
    """
    found = {
        key.lower(): value
        for key, value in dotenv_values(env_file).items()
        if key and value not in (None, "")
    }
    overrides: dict[str, Any] = {
        name: found.get(name, info.default) for name, info in Settings.model_fields.items()
    }
    try:
        return load_settings(_env_file=None, **overrides)
    except ConfigError as exc:
        raise ConfigError(f"target {env_file}: {exc}") from None


def store_identity(settings: Settings) -> tuple[str, ...]:
    """What makes two configurations the same store; holds no secret."""
    if settings.agentstore_backend == "memory":
        return ("memory",)
    secret = settings.postgres_connection_string
    if secret is not None and settings.agentstore_backend != "cosmos":
        import psycopg2.extensions

        try:
            dsn = psycopg2.extensions.parse_dsn(secret.get_secret_value())
        except psycopg2.ProgrammingError:
            raise ConfigError("POSTGRES_CONNECTION_STRING cannot be parsed") from None
        host = (dsn.get("host") or dsn.get("hostaddr") or "").split(",")[0].lower()
        # Loopback by name, by address or through the socket is one server: refuse all alike.
        if host in ("", "localhost", "127.0.0.1", "::1") or host.startswith("/"):
            host = "localhost"
        port = (dsn.get("port") or "5432").split(",")[0]
        return ("postgres", host, port, dsn.get("dbname") or dsn.get("user") or "")
    if settings.cosmos_endpoint:
        from urllib.parse import urlsplit

        parts = urlsplit(settings.cosmos_endpoint)
        host = (parts.hostname or "").lower()
        host = "localhost" if host in ("localhost", "127.0.0.1", "::1") else host
        return ("cosmos", host, str(parts.port or 443), settings.cosmos_database_name)
    return ("none",)


def describe(settings: Settings) -> str:
    """The configured store for humans, secrets masked."""
    if settings.agentstore_backend == "memory":
        return "in-memory store (this process only)"
    secret = settings.postgres_connection_string
    if secret is not None and settings.agentstore_backend != "cosmos":
        dsn = secret.get_secret_value()
        if "://" in dsn:
            return f"PostgreSQL {mask_url(dsn)}"
        _, host, port, db = store_identity(settings)
        return f"PostgreSQL host={host} port={port} dbname={db}"
    if settings.cosmos_endpoint:
        endpoint = mask_url(settings.cosmos_endpoint)
        return f"Cosmos DB {endpoint} database {settings.cosmos_database_name}"
    return "no store configured"


def open_store(settings: Settings, side: str) -> StorageBackend:
    """`create_storage_client(settings)`, with errors naming the side (source or target)."""
    try:
        return create_storage_client(settings)
    except StorageError as exc:
        raise type(exc)(f"{side}: {exc}") from None
