"""The SQL the PostgreSQL backend runs, one statement per job, all parameterised."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pydantic_core

from .records import KIND_SPECS, SCOPE_KINDS, STORED_AS, TOMBSTONE_TABLE, Kind, Record, StreamKind
from .retention import ROW_DELETED_KINDS, RetentionPolicy, category, prune_limits

# A batch's rows arrive by COPY into this temporary table (one per session, emptied at each
# commit), then one INSERT ... SELECT per kind merges them: PostgreSQL parses each payload
# once, straight from COPY's text, which costs it about a third of the CPU per row that
# expanding a JSON array parameter with jsonb_to_recordset did (bench: "ingest").
INCOMING = "agentstore_incoming"
# Run in the batch's own transaction, before the COPY: a rolled-back first batch takes the
# table with it, and a connection handed from session to session (a pooler) always has one.
CREATE_INCOMING = (
    f"CREATE TEMP TABLE IF NOT EXISTS {INCOMING} (kind text, id text, part text, "
    "sub_id text, data jsonb, version text, position text, deleted boolean) "
    "ON COMMIT DELETE ROWS"
)
COPY_INCOMING = f"COPY {INCOMING} FROM STDIN"


def _guarded(kind: Kind, columns: tuple[str, ...], on_conflict: str) -> str:
    # Rows go in row id order, so concurrent batches lock rows in one order and never
    # deadlock. Rows older than a tombstone of their partition (erase, whole-history delete)
    # are skipped, so a late redelivered save cannot bring back what was deleted after it.
    spec = KIND_SPECS[kind]
    # Every row has an id, a partition, a payload and a version; `columns` names the rest,
    # each read from the incoming column of the same name (the sub id from `sub_id`).
    names = ", ".join(("id", spec.partition, spec.payload, "version", *columns))
    extra = "".join(", r.sub_id" if c == spec.sub_id else f", r.{c}" for c in columns)
    return (
        f"INSERT INTO {spec.name} AS t ({names}) "
        f"SELECT r.id, r.part, r.data, r.version{extra} FROM {INCOMING} r "
        f"WHERE r.kind = '{kind}' AND NOT EXISTS (SELECT 1 FROM {TOMBSTONE_TABLE} tb "
        f"WHERE tb.scope = '{spec.scope}' AND tb.key = r.part "
        'AND tb.version >= r.version COLLATE "C") '
        f'ORDER BY r.id COLLATE "C" ON CONFLICT {on_conflict} '
        # The rows this statement wrote: what the worker counts as applied.
        "RETURNING t.id, t.version"
    )


def _keyed(kind: Kind) -> str:
    # One row per (partition, sub id): states and tasks.
    spec = KIND_SPECS[kind]
    return _guarded(
        kind,
        (spec.sub_id, "deleted"),
        f"({spec.partition}, {spec.sub_id}) DO UPDATE SET "
        f"{spec.payload} = EXCLUDED.{spec.payload}, "
        "version = EXCLUDED.version, deleted = EXCLUDED.deleted, "
        "timestamp = CURRENT_TIMESTAMP WHERE t.version < EXCLUDED.version",
    )


def _thread_rows(kind: Kind, overwrite: str = "true") -> str:
    # Checkpoint rows: the newer version wins, unless `overwrite` (SQL) says to keep the first.
    spec = KIND_SPECS[kind]
    return _guarded(
        kind,
        (spec.sub_id, "deleted"),
        f"(id) DO UPDATE SET {spec.payload} = EXCLUDED.{spec.payload}, "
        "version = EXCLUDED.version, deleted = EXCLUDED.deleted, "
        "timestamp = CURRENT_TIMESTAMP WHERE t.version < EXCLUDED.version "
        f"AND (t.deleted OR EXCLUDED.deleted OR {overwrite})",
    )


_TXN = KIND_SPECS["transaction"].payload
# Each upsert writes only when the incoming version is newer, so redelivered and reordered
# ops converge on the newest version.
UPSERTS: dict[Kind, str] = {
    "state": _keyed("state"),
    "task": _keyed("task"),
    # Messages are immutable: the first copy of a message id stays.
    "conversation": _guarded("conversation", ("position",), "(id) DO NOTHING"),
    # A re-saved transaction takes the newer content but keeps its first position.
    "transaction": _guarded(
        "transaction",
        ("position", "deleted"),
        "(id) DO UPDATE SET "
        f"{_TXN} = CASE WHEN t.version < EXCLUDED.version "
        f"THEN EXCLUDED.{_TXN} ELSE t.{_TXN} END, "
        "deleted = CASE WHEN t.version < EXCLUDED.version "
        "THEN EXCLUDED.deleted ELSE t.deleted END, "
        "version = GREATEST(t.version, EXCLUDED.version), "
        "position = LEAST(t.position, EXCLUDED.position), timestamp = CURRENT_TIMESTAMP "
        "WHERE t.version < EXCLUDED.version OR t.position > EXCLUDED.position",
    ),
    "checkpoint": _thread_rows("checkpoint"),
    "checkpoint_blob": _thread_rows("checkpoint_blob"),
    # `storage.checkpoints.keeps_first`: only the special channels' writes (idx < 0) overwrite.
    "checkpoint_write": _thread_rows(
        "checkpoint_write",
        f"(EXCLUDED.{KIND_SPECS['checkpoint_write'].payload}->>'idx')::int < 0",
    ),
}
# COPY's text format: a backslash escapes; tab, newline and carriage return end a field or
# a row. Payload JSON text holds no raw control characters (JSON escapes them), only
# backslashes; ids may hold any of the four.
# A regular expression finds one without making a string per character, as a set would.
_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _field(text: str) -> str:
    return text.translate(_COPY_ESCAPES) if _COPY_SPECIAL.search(text) else text


def _json(data: dict[str, Any]) -> str:
    # Payloads were validated as plain JSON (finite numbers, str keys, no lone surrogates),
    # which orjson writes ~2x faster than pydantic-core and ~10x faster than json, as JSON
    # of the same value. Anything it cannot write (a number beyond 64 bits in a record from
    # elsewhere) takes pydantic-core's way.
    try:
        return orjson.dumps(data).decode()
    except orjson.JSONEncodeError:
        return pydantic_core.to_json(data).decode()


def copy_rows(kind: Kind, recs: list[Record]) -> str:
    """`recs` as COPY text for `INCOMING`, one line each."""
    text = "".join(
        [
            f"{kind}\t{rec.row_id}\t{rec.partition}\t{rec.sub_id}\t{_json(rec.data)}\t"
            f"{rec.version}\t{rec.position}\t{'t' if rec.deleted else 'f'}\n"
            for rec in recs
        ]
    )
    # JSON text holds no raw tab, newline or carriage return; ids rarely do. If none does,
    # only backslashes need escaping, the same in every field: one pass over the text.
    if text.count("\t") != 7 * len(recs) or text.count("\n") != len(recs) or "\r" in text:
        return "".join([_escaped_line(kind, rec) for rec in recs])
    return text.replace("\\", "\\\\") if "\\" in text else text


def _escaped_line(kind: Kind, rec: Record) -> str:
    data = _json(rec.data).replace("\\", "\\\\")
    rid, part, sub, position = map(_field, (rec.row_id, rec.partition, rec.sub_id, rec.position))
    deleted = "t" if rec.deleted else "f"
    return f"{kind}\t{rid}\t{part}\t{sub}\t{data}\t{rec.version}\t{position}\t{deleted}\n"


def stored_versions_sql(kinds: list[Kind], tombstones: bool) -> str:
    """One query for the stored versions of rows (an id array per kind, in `kinds` order)
    and, with `tombstones`, of tombstones (then a scope array and a key array): rows of
    (stream kind, row id, version), deleted rows included."""
    parts = [
        f"SELECT '{kind}', id, version FROM {KIND_SPECS[kind].name} WHERE id = ANY(%s)"
        for kind in kinds
    ]
    if tombstones:
        parts.append(
            f"SELECT 'tombstone', t.scope || '|' || t.key, t.version FROM {TOMBSTONE_TABLE} t "
            "JOIN unnest(%s::text[], %s::text[]) AS w(scope, key) "
            "ON t.scope = w.scope AND t.key = w.key"
        )
    return " UNION ALL ".join(parts)


TOMBSTONE_UPSERT = (
    f"INSERT INTO {TOMBSTONE_TABLE} AS t (scope, key, version) VALUES %s "
    "ON CONFLICT (scope, key) DO UPDATE SET version = EXCLUDED.version, created_at = now() "
    "WHERE t.version < EXCLUDED.version RETURNING t.scope, t.key, t.version"
)


# What a tombstone of each scope removes at once: its partition's rows not newer than it.
def _erase(kind: Kind) -> str:
    spec = KIND_SPECS[kind]
    return (
        f"DELETE FROM {spec.name} d USING (VALUES %s) AS tb(key, version) "
        f'WHERE d.{spec.partition} = tb.key AND d.version <= tb.version COLLATE "C"'
    )


TOMBSTONE_DELETES = {scope: tuple(map(_erase, kinds)) for scope, kinds in SCOPE_KINDS.items()}


def _scan(kind: Kind, sub_id: str, position: str, deleted: str) -> str:
    spec = KIND_SPECS[kind]
    return (
        f"id, {spec.partition}, {sub_id}, {spec.payload}, version, {position}, {deleted} "
        f"FROM {spec.name}"
    )


# Columns read back as Records: row id, partition, sub id, payload, version, position, deleted.
SCANS: dict[Kind, str] = {
    "state": _scan("state", KIND_SPECS["state"].sub_id, "version", "deleted"),
    "task": _scan("task", KIND_SPECS["task"].sub_id, "version", "deleted"),
    # A message's id is its row id; a transaction's is the "id" of its payload.
    "conversation": _scan("conversation", "id", "position", "false"),
    "transaction": _scan("transaction", f"{_TXN}->>'id'", "position", "deleted"),
    **{
        kind: _scan(kind, KIND_SPECS[kind].sub_id, "version", "deleted")
        for kind in ("checkpoint", "checkpoint_blob", "checkpoint_write")
    },
}
# Exact counts, for progress totals (`StorageBackend.count`).
COUNTS: dict[StreamKind, str] = {
    kind: f"SELECT count(*) FROM {table}" for kind, table in STORED_AS.items()
}

_AGE = "timestamp < CURRENT_TIMESTAMP - make_interval(secs => %s)"
_CONV, _TASKS = KIND_SPECS["conversation"], KIND_SPECS["task"]
# Per category (see `retention.prune_limits`): a query selecting ids of rows to remove.
_PRUNE_SELECTS: dict[str, str] = {
    category("conversation", "over_count"): "SELECT id FROM (SELECT id, row_number() OVER "
    f"(PARTITION BY {_CONV.partition} ORDER BY position DESC) AS newest FROM {_CONV.name}) "
    "ranked WHERE newest > %s",
    category("conversation", "expired"): f"SELECT id FROM {_CONV.name} WHERE {_AGE}",
    category("task", "expired"): f"SELECT id FROM {_TASKS.name} "
    f"WHERE {_TASKS.payload}->>'status' = ANY(%s) AND {_AGE}",
    category("transaction", "expired"): f"SELECT id FROM {STORED_AS['transaction']} WHERE {_AGE}",
    **{
        category(kind, "tombstones"): f"SELECT id FROM {STORED_AS[kind]} WHERE deleted AND {_AGE}"
        for kind in ROW_DELETED_KINDS
    },
    category("tombstone", "expired"): f"SELECT ctid AS id FROM {TOMBSTONE_TABLE} "
    "WHERE created_at < now() - make_interval(secs => %s)",
}


def prune_statements(policy: RetentionPolicy) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """Per category: a query selecting (up to %s) ids of rows to remove, and its parameters.

    Each is run as `DELETE ... WHERE id IN (<query> LIMIT n)` in short transactions.
    """
    found: dict[str, tuple[str, tuple[Any, ...]]] = {}
    for name, limit in prune_limits(policy).items():
        params: tuple[Any, ...] = (limit,)
        if name == category("task", "expired"):
            params = (list(policy.finished_statuses), limit)
        found[name] = (_PRUNE_SELECTS[name], params)
    return found


def prune_delete(name: str, select: str) -> str:
    table = name.split(":")[0]
    key = "ctid" if table == TOMBSTONE_TABLE else "id"
    return f"DELETE FROM {table} WHERE {key} IN ({select} LIMIT %s)"


def prune_count(select: str) -> str:
    return f"SELECT count(*) FROM ({select}) doomed"
