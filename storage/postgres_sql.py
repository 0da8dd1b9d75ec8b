"""The SQL the PostgreSQL backend runs, one statement per job, all parameterised."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pydantic_core

from .records import Kind, Record, Scope
from .retention import RetentionPolicy, prune_limits

_RECORDSET = (
    "jsonb_to_recordset(%s::jsonb) AS r(id text, part text, sub_id text, data jsonb, "
    "version text, position text, deleted boolean)"
)


def _guarded(table: str, columns: str, values: str, scope: Scope, on_conflict: str) -> str:
    # A page of rows travels as one JSON array parameter expanded by jsonb_to_recordset:
    # PostgreSQL parses one short statement instead of a VALUES list of thousands of
    # parameters (~1.5x the rows per second of execute_values). Rows go in row id order, so
    # concurrent batches lock rows in one order and never deadlock. Rows older than a
    # tombstone of their partition (erase, whole-history delete) are skipped, so a late
    # redelivered save cannot bring back what was deleted after it.
    return (
        f"INSERT INTO {table} AS t ({columns}) SELECT {values} FROM {_RECORDSET} "
        "WHERE NOT EXISTS (SELECT 1 FROM agentstore_tombstones tb "
        f"WHERE tb.scope = '{scope}' AND tb.key = r.part "
        'AND tb.version >= r.version COLLATE "C") '
        f'ORDER BY r.id COLLATE "C" ON CONFLICT {on_conflict}'
    )


def _keyed(table: str, sub_id: str, payload: str) -> str:
    return _guarded(
        table,
        f"id, agent_id, {sub_id}, {payload}, version, deleted",
        "r.id, r.part, r.sub_id, r.data, r.version, r.deleted",
        "agent",
        f"(agent_id, {sub_id}) DO UPDATE SET {payload} = EXCLUDED.{payload}, "
        "version = EXCLUDED.version, deleted = EXCLUDED.deleted, "
        "timestamp = CURRENT_TIMESTAMP WHERE t.version < EXCLUDED.version",
    )


# Each upsert writes only when the incoming version is newer, so redelivered and reordered
# ops converge on the newest version.
UPSERTS: dict[Kind, str] = {
    "state": _keyed("agent_states", "state_id", "state"),
    "task": _keyed("agent_tasks", "task_id", "task_data"),
    # Messages are immutable: the first copy of a message id stays.
    "conversation": _guarded(
        "conversations",
        "id, conversation_id, message, version, position",
        "r.id, r.part, r.data, r.version, r.position",
        "conversation",
        "(id) DO NOTHING",
    ),
    # A re-saved transaction takes the newer content but keeps its first position.
    "transaction": _guarded(
        "transactions",
        "id, case_id, transaction, version, position, deleted",
        "r.id, r.part, r.data, r.version, r.position, r.deleted",
        "case",
        "(id) DO UPDATE SET "
        "transaction = CASE WHEN t.version < EXCLUDED.version "
        "THEN EXCLUDED.transaction ELSE t.transaction END, "
        "deleted = CASE WHEN t.version < EXCLUDED.version "
        "THEN EXCLUDED.deleted ELSE t.deleted END, "
        "version = GREATEST(t.version, EXCLUDED.version), "
        "position = LEAST(t.position, EXCLUDED.position), timestamp = CURRENT_TIMESTAMP "
        "WHERE t.version < EXCLUDED.version OR t.position > EXCLUDED.position",
    ),
}
# Rows per statement, and characters: a page stays far below PostgreSQL's 1 GB value limit.
_PAGE_ROWS = 1000
_PAGE_CHARS = 16_000_000
_quote = json.encoder.encode_basestring  # a JSON string literal, non-ASCII kept as is


def _json_row(rec: Record) -> str:
    """One row of a page: every column jsonb_to_recordset reads, for any kind."""
    # Payloads were validated as plain JSON; pydantic-core writes them ~5x faster than json.
    data = pydantic_core.to_json(rec.data).decode()
    return (
        f'{{"id":{_quote(rec.row_id)},"part":{_quote(rec.partition)},'
        f'"sub_id":{_quote(rec.sub_id)},"data":{data},"version":{_quote(rec.version)},'
        f'"position":{_quote(rec.position)},"deleted":{"true" if rec.deleted else "false"}}}'
    )


def pages(recs: list[Record]) -> Iterator[str]:
    """JSON arrays of at most `_PAGE_ROWS` rows and about `_PAGE_CHARS` characters."""
    page: list[str] = []
    size = 0
    for rec in recs:
        row = _json_row(rec)
        if page and (len(page) >= _PAGE_ROWS or size + len(row) > _PAGE_CHARS):
            yield "[" + ",".join(page) + "]"
            page, size = [], 0
        page.append(row)
        size += len(row) + 1
    if page:
        yield "[" + ",".join(page) + "]"


TOMBSTONE_UPSERT = (
    "INSERT INTO agentstore_tombstones AS t (scope, key, version) VALUES %s "
    "ON CONFLICT (scope, key) DO UPDATE SET version = EXCLUDED.version, created_at = now() "
    "WHERE t.version < EXCLUDED.version"
)


# What a tombstone of each scope removes at once: its partition's rows not newer than it.
def _erase(table: str, column: str) -> str:
    return (
        f"DELETE FROM {table} d USING (VALUES %s) AS tb(key, version) "
        f'WHERE d.{column} = tb.key AND d.version <= tb.version COLLATE "C"'
    )


TOMBSTONE_DELETES: dict[Scope, tuple[str, ...]] = {
    "agent": (_erase("agent_states", "agent_id"), _erase("agent_tasks", "agent_id")),
    "conversation": (_erase("conversations", "conversation_id"),),
    "case": (_erase("transactions", "case_id"),),
}

# Columns read back as Records: row id, partition, sub id, payload, version, position, deleted.
SCANS: dict[Kind, str] = {
    "state": "id, agent_id, state_id, state, version, version, deleted FROM agent_states",
    "task": "id, agent_id, task_id, task_data, version, version, deleted FROM agent_tasks",
    "conversation": "id, conversation_id, id, message, version, position, false FROM conversations",
    "transaction": "id, case_id, transaction->>'id', transaction, version, position, deleted "
    "FROM transactions",
}


_AGE = "timestamp < CURRENT_TIMESTAMP - make_interval(secs => %s)"
# Per category (see `retention.prune_limits`): a query selecting ids of rows to remove.
_PRUNE_SELECTS: dict[str, str] = {
    "conversations:over_count": "SELECT id FROM (SELECT id, row_number() OVER "
    "(PARTITION BY conversation_id ORDER BY position DESC) AS newest FROM conversations) "
    "ranked WHERE newest > %s",
    "conversations:expired": f"SELECT id FROM conversations WHERE {_AGE}",
    "agent_tasks:expired": "SELECT id FROM agent_tasks "
    f"WHERE task_data->>'status' = ANY(%s) AND {_AGE}",
    "transactions:expired": f"SELECT id FROM transactions WHERE {_AGE}",
    **{
        f"{table}:tombstones": f"SELECT id FROM {table} WHERE deleted AND {_AGE}"
        for table in ("agent_states", "agent_tasks", "transactions")
    },
    "agentstore_tombstones:expired": "SELECT ctid AS id FROM agentstore_tombstones "
    "WHERE created_at < now() - make_interval(secs => %s)",
}


def prune_statements(policy: RetentionPolicy) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """Per category: a query selecting (up to %s) ids of rows to remove, and its parameters.

    Each is run as `DELETE ... WHERE id IN (<query> LIMIT n)` in short transactions.
    """
    found: dict[str, tuple[str, tuple[Any, ...]]] = {}
    for category, limit in prune_limits(policy).items():
        params: tuple[Any, ...] = (limit,)
        if category == "agent_tasks:expired":
            params = (list(policy.finished_statuses), limit)
        found[category] = (_PRUNE_SELECTS[category], params)
    return found


def prune_delete(category: str, select: str) -> str:
    table = category.split(":")[0]
    key = "ctid" if table == "agentstore_tombstones" else "id"
    return f"DELETE FROM {table} WHERE {key} IN ({select} LIMIT %s)"


def prune_count(select: str) -> str:
    return f"SELECT count(*) FROM ({select}) doomed"
