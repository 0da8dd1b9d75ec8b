"""The `StorageClient` reads on PostgreSQL as statements plus the shaping of their rows: one
definition for the blocking client (psycopg2) and the asyncio reader (psycopg 3)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .base import check_limit
from .ids import check_id

T = TypeVar("T")
Rows = list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Query(Generic[T]):
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
