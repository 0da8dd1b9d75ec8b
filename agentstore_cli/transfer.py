"""Export, import and migration: records streamed page by page between stores and JSON Lines.

Every step reads with `scan_tombstones` and `scan_records` (keyset pages in row id order) and
writes with `write_records` (`write_page`). Partition tombstones (erase, whole-history
deletes) travel first, then the records, each with its version (and position), so writing one
twice is a no-op: an interrupted import or migration is finished by running it again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, cast

from storage.base import StorageBackend
from storage.errors import ValidationError
from storage.ids import check_id
from storage.payload import encode_payload
from storage.records import (
    SCOPE_KINDS,
    STREAM_KINDS,
    Record,
    Scope,
    StreamKind,
    Tombstone,
    collect,
)
from storage.versions import VERSION_RE

from .progress import NoProgress, Progress

DEFAULT_PAGE_SIZE = 500
FIELDS = ("kind", "row_id", "partition", "sub_id", "data", "version", "position", "deleted")
# A partition tombstone: everything of scope `key` older than `version` is deleted.
TOMBSTONE_FIELDS = ("kind", "scope", "key", "version")
# Files written before deletes existed have no "deleted": their records are all live.
_OPTIONAL = {"deleted": False}


class TransferError(Exception):
    """An export, import or migration cannot go on; the message says why and what to do."""


class BadLine(TransferError):
    """A line of an import file is not a valid record."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason
        self.written = 0  # records of earlier pages already written when this line failed


def parse_kinds(text: str) -> tuple[StreamKind, ...]:
    """`"state,task"` -> `("state", "task")` in the canonical order; raises on unknown names."""
    names = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(names - set(STREAM_KINDS))
    if unknown or not names:
        known = ",".join(STREAM_KINDS)
        raise ValueError(f"unknown kind(s) {', '.join(unknown) or '(none)'}; use {known}")
    return tuple(kind for kind in STREAM_KINDS if kind in names)


def kind_of(item: Record | Tombstone) -> StreamKind:
    """The stream kind of a record or tombstone."""
    return item.kind if isinstance(item, Record) else "tombstone"


def scan_pages(
    store: StorageBackend, kind: StreamKind, page_size: int, after: str | None = None
) -> Iterator[Sequence[Record | Tombstone]]:
    """Everything of `kind` with row id > `after`, one page of at most `page_size` at a time."""
    while True:
        page: Sequence[Record | Tombstone] = (
            store.scan_tombstones(after, page_size)
            if kind == "tombstone"
            else store.scan_records(kind, after=after, limit=page_size)
        )
        if not page:
            return
        yield page
        after = page[-1].row_id


def write_page(store: StorageBackend, page: Iterable[Record | Tombstone]) -> None:
    """Write a page of records and tombstones with the same version rules as any save."""
    batch = collect(page)
    store.write_records(batch.records, batch.tombstones)


def count_records(store: StorageBackend, kind: StreamKind, page_size: int = 1000) -> int:
    """How many records of `kind` the store holds, counted by scanning all of them."""
    return sum(len(page) for page in scan_pages(store, kind, page_size))


# -- JSON Lines -----------------------------------------------------------------------------


def record_line(item: Record | Tombstone) -> bytes:
    """One record or tombstone as a JSON Lines line (UTF-8, with its newline)."""
    if isinstance(item, Record):
        obj = {name: getattr(item, name) for name in FIELDS}
    else:
        obj = {"kind": "tombstone", "scope": item.scope, "key": item.key, "version": item.version}
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def parse_line(raw: bytes | str, line: int) -> Record | Tombstone:
    """Validate one line into a `Record` or a `Tombstone`; raise `BadLine` saying what is
    wrong and where."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        obj = json.loads(text)
    except UnicodeDecodeError:
        raise BadLine(line, "not valid UTF-8") from None
    except ValueError as exc:
        raise BadLine(line, f"not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise BadLine(line, f"expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("kind")
    if kind == "tombstone":
        return _parse_tombstone(obj, line)
    obj = {**_OPTIONAL, **obj}
    _check_fields(obj, FIELDS, line)
    if kind not in STREAM_KINDS:
        kinds = ", ".join(STREAM_KINDS)
        raise BadLine(line, f"kind must be one of {kinds}, got {str(kind)[:40]!r}")
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
    _check_version(obj["version"], line)
    if not isinstance(obj["deleted"], bool):
        raise BadLine(line, "deleted must be true or false")
    return Record(
        kind,
        obj["row_id"],
        obj["partition"],
        obj["data"],
        obj["version"],
        obj["position"],
        obj["sub_id"],
        obj["deleted"],
    )


def _parse_tombstone(obj: dict[str, Any], line: int) -> Tombstone:
    _check_fields(obj, TOMBSTONE_FIELDS, line)
    scope = obj["scope"]
    if scope not in SCOPE_KINDS:
        scopes = ", ".join(SCOPE_KINDS)
        raise BadLine(line, f"scope must be one of {scopes}, got {str(scope)[:40]!r}")
    try:
        check_id("key", obj["key"])
    except ValidationError as exc:
        raise BadLine(line, str(exc)) from None
    _check_version(obj["version"], line)
    return Tombstone(cast(Scope, scope), obj["key"], obj["version"])


def _check_fields(obj: dict[str, Any], fields: tuple[str, ...], line: int) -> None:
    missing = [name for name in fields if name not in obj]
    extra = sorted(set(obj) - set(fields))
    if missing or extra:
        what = [f"missing {', '.join(missing)}"] if missing else []
        what += [f"unknown {', '.join(map(repr, extra))[:200]}"] if extra else []
        raise BadLine(line, f"fields: {'; '.join(what)} (expected {', '.join(fields)})")


def _check_version(version: object, line: int) -> None:
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise BadLine(line, "version must be 1-64 characters from [0-9A-Za-z._:-]")


def export_records(
    store: StorageBackend,
    out: IO[bytes],
    kinds: Iterable[StreamKind] = STREAM_KINDS,
    page_size: int = DEFAULT_PAGE_SIZE,
    progress: Progress | None = None,
    totals: Callable[[StreamKind], int | None] = lambda kind: None,
) -> dict[StreamKind, int]:
    """Write every tombstone and record of `kinds` to `out` as JSON Lines; the count per kind.

    Holds one page in memory at a time, whatever the size of the store.
    """
    progress = progress or NoProgress()
    written: dict[StreamKind, int] = {}
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
    per_kind: dict[StreamKind, int] = field(default_factory=lambda: dict.fromkeys(STREAM_KINDS, 0))


def import_records(
    store: StorageBackend | None,
    lines: Iterable[bytes | str],
    page_size: int = DEFAULT_PAGE_SIZE,
    progress: Progress | None = None,
) -> ImportResult:
    """Validate and write JSON Lines records, `page_size` lines per `write_page` call.

    A page is validated whole before it is written, so a bad line stops the import with
    nothing of its page written; the pages before it stay written (`BadLine.written` says
    how many records). Writes are idempotent: after fixing the line, import the same file
    again. With `store=None` nothing is written (a dry run that validates every line).
    """
    progress = progress or NoProgress()
    result = ImportResult()
    page: list[Record | Tombstone] = []

    def flush() -> None:
        if page and store is not None:
            write_page(store, page)
        result.records += len(page)
        for item in page:
            result.per_kind[kind_of(item)] += 1
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
