"""The `StorageClient` reads on PostgreSQL as statements plus the shaping of their rows: one
definition for the blocking client (psycopg2) and the asyncio reader (psycopg 3)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

from .base import check_limit, prefix_bounds
from .checkpoint_reads import Loaded, Wanted, assemble
from .checkpoints import checkpoint_rid, thread_prefix
from .ids import check_id
from .postgres_schema import escaped_sql
from .records import KIND_SPECS, Kind, Record

T = TypeVar("T")
Rows = list[tuple[Any, ...]]


class Query(NamedTuple, Generic[T]):
    """A read: run `sql` with `params`, then `shape` the fetched rows into its result."""

    sql: str
    params: tuple[Any, ...]
    shape: Callable[[Rows], T]


def _first(rows: Rows) -> dict[str, Any] | None:
    return rows[0][0] if rows else None


def _column(rows: Rows) -> list[Any]:
    return [row[0] for row in rows]


def _sorted_column(rows: Rows) -> list[str]:
    return sorted(row[0] for row in rows)


def get_state(agent_id: str, state_id: str) -> Query[dict[str, Any] | None]:
    check_id("agent_id", agent_id)
    check_id("state_id", state_id)
    return Query(
        "SELECT state FROM agent_states WHERE agent_id = %s AND state_id = %s AND NOT deleted",
        (agent_id, state_id),
        _first,
    )


def get_task(agent_id: str, task_id: str) -> Query[dict[str, Any] | None]:
    check_id("agent_id", agent_id)
    check_id("task_id", task_id)
    return Query(
        "SELECT task_data FROM agent_tasks WHERE agent_id = %s AND task_id = %s AND NOT deleted",
        (agent_id, task_id),
        _first,
    )


def get_conversation_history(
    conversation_id: str, limit: int | None = None
) -> Query[list[dict[str, Any]]]:
    check_id("conversation_id", conversation_id)
    limit = check_limit(limit)
    if limit is None:
        return Query(
            "SELECT message FROM conversations WHERE conversation_id = %s ORDER BY position",
            (conversation_id,),
            _column,
        )
    return Query(
        "SELECT message FROM (SELECT message, position FROM conversations "
        "WHERE conversation_id = %s ORDER BY position DESC LIMIT %s) newest "
        "ORDER BY position",
        (conversation_id, limit),
        _column,
    )


def get_transactions(case_id: str) -> Query[list[dict[str, Any]]]:
    check_id("case_id", case_id)
    return Query(
        "SELECT transaction FROM transactions WHERE case_id = %s AND NOT deleted ORDER BY position",
        (case_id,),
        _column,
    )


def list_states(agent_id: str) -> Query[list[str]]:
    check_id("agent_id", agent_id)
    return Query(
        "SELECT state_id FROM agent_states WHERE agent_id = %s AND NOT deleted",
        (agent_id,),
        _sorted_column,
    )


def list_tasks(agent_id: str) -> Query[list[str]]:
    check_id("agent_id", agent_id)
    return Query(
        "SELECT task_id FROM agent_tasks WHERE agent_id = %s AND NOT deleted",
        (agent_id,),
        _sorted_column,
    )


# -- LangGraph checkpoints: a checkpoint, its channel blobs and its pending writes at once --


def _escaped(expr: str) -> str:
    return escaped_sql(expr).replace("%", "%%")  # a literal % in a statement with parameters


def _columns(kind: Kind, alias: str) -> str:
    spec = KIND_SPECS[kind]
    return (
        ", ".join(
            f"{alias}.{column}" for column in ("id", spec.partition, spec.sub_id, spec.payload)
        )
        + f", {alias}.version"
    )


_CP, _BLOB, _WRITE = (KIND_SPECS[k] for k in ("checkpoint", "checkpoint_blob", "checkpoint_write"))
_TAGS: tuple[Kind, ...] = ("checkpoint", "checkpoint_blob", "checkpoint_write")


# A blob's row id is its checkpoint's namespace prefix (the checkpoint's row id up to its
# last "|") + channel + "|" + version; the later parts of a split value, and a checkpoint's
# writes, are the rows whose ids extend a row id by "|" (ids below it + "}" do).
#
# The checkpoints are found by their row id range alone, newest first: a backward scan of the
# primary key that stops at the limit. For the newest alone (get_tuple) LIMIT 1 is written
# in, so the generic plan a prepared statement keeps is that scan too. With the thread column
# as well, PostgreSQL ANDed two bitmaps and sorted every checkpoint of the thread: 0.59
# against 0.25 ms for the latest of 5,000 (docs/PERFORMANCE.md).
@functools.cache
def _load_sql(where: str, newest: bool) -> str:
    return f"""
WITH c AS (
    SELECT {_columns("checkpoint", "t")} FROM {_CP.name} t
    WHERE {where} AND NOT t.deleted ORDER BY t.id DESC LIMIT {"1" if newest else "%s"}
), b AS (
    SELECT c.id AS owner, x.* FROM c
    CROSS JOIN LATERAL jsonb_each_text(c.{_CP.payload} -> 'channel_versions') v(ch, ver)
    CROSS JOIN LATERAL (
        SELECT {_columns("checkpoint_blob", "y")} FROM {_BLOB.name} y
        WHERE y.id = regexp_replace(c.id, '[^|]*$', '')
            || {_escaped("v.ch")} || '|' || {_escaped("v.ver")} AND NOT y.deleted
        OFFSET 0  -- not pulled up into a join: a lookup of the primary key per channel
    ) x
)
SELECT 0, c.id, c.* FROM c
UNION ALL SELECT 1, b.* FROM b
UNION ALL SELECT 1, b.owner, {_columns("checkpoint_blob", "p")} FROM b
    JOIN {_BLOB.name} p ON p.id > b.id || '|' AND p.id < b.id || '}}' AND NOT p.deleted
    WHERE COALESCE((b.{_BLOB.payload} ->> 'parts')::int, 1) > 1
UNION ALL SELECT 2, c.id, {_columns("checkpoint_write", "w")} FROM c
    JOIN {_WRITE.name} w ON w.id > c.id || '|' AND w.id < c.id || '}}' AND NOT w.deleted
"""


def _loaded(rows: Rows) -> list[Loaded]:
    heads: list[Record] = []
    found: dict[str, tuple[list[Record], list[Record]]] = {}
    for tag, owner, rid, partition, sub, data, version in rows:
        rec = Record(_TAGS[tag], rid, partition, data, version, version, sub)
        if tag == 0:
            heads.append(rec)
        else:
            found.setdefault(owner, ([], []))[tag - 1].append(rec)
    heads.sort(key=lambda r: r.row_id, reverse=True)
    return [assemble(head, *found.get(head.row_id, ([], []))) for head in heads]


def load_checkpoints(wanted: Wanted) -> Query[list[Loaded]]:
    """`StorageBackend.load_checkpoints` in one statement."""
    thread_id, ns = wanted.thread_id, wanted.ns
    if wanted.checkpoint_id is not None and ns is not None:
        where, params = "t.id = %s", [checkpoint_rid(thread_id, ns, wanted.checkpoint_id)]
    else:
        prefix = thread_prefix(thread_id) if ns is None else thread_prefix(thread_id, ns)
        where, params = "t.id >= %s AND t.id < %s", list(prefix_bounds(prefix, wanted.below))
        if wanted.checkpoint_id is not None:
            where += f" AND t.{_CP.payload} ->> 'checkpoint_id' = %s"
            params.append(wanted.checkpoint_id)
    limit = check_limit(wanted.limit)
    if limit == 1:
        return Query(_load_sql(where, True), tuple(params), _loaded)
    return Query(_load_sql(where, False), (*params, limit), _loaded)
