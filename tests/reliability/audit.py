"""Compares what producers were acknowledged with what PostgreSQL holds after the drain.

Unacknowledged saves (the publish raised) may or may not have been applied: they are never
counted as lost, but a stored value must still come from some save that was made.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, cast

from storage import PostgreSQLClient
from tests.integration.helpers import rows
from tests.reliability.ledger import Save


@dataclass
class Audit:
    """Counts per failure class; `problems` keeps the first examples for the report."""

    sent: int = 0
    acked: int = 0
    applied: int = 0
    lost: int = 0
    stale: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    foreign: int = 0  # stored content that no save produced (or not with that version)
    problems: list[str] = field(default_factory=list)

    def problem(self, what: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(what)

    @property
    def clean(self) -> bool:
        return not (self.lost or self.stale or self.duplicated or self.out_of_order or self.foreign)


def audit(saves: list[Save], database: str) -> Audit:
    result = Audit(sent=len(saves), acked=sum(s.acked for s in saves))
    by_kind: dict[str, list[Save]] = defaultdict(list)
    for save in saves:
        by_kind[save.kind].append(save)
    for kind, table, sub_col, data_col in (
        ("state", "agent_states", "state_id", "state"),
        ("task", "agent_tasks", "task_id", "task_data"),
    ):
        stored = {
            (owner, sub): (version, data)
            for owner, sub, version, data in rows(
                database, f"SELECT agent_id, {sub_col}, version, {data_col} FROM {table}"
            )
        }
        _keyed(result, kind, by_kind[kind], stored)
    with PostgreSQLClient(postgres_connection_string=database) as store:
        _conversations(result, by_kind["conversation"], store)
    _transactions(result, by_kind["transaction"], database)
    return result


def _keyed(result: Audit, kind: str, saves: list[Save], stored: dict[Any, Any]) -> None:
    per_key: dict[tuple[str, str], list[Save]] = defaultdict(list)
    for save in saves:
        per_key[(save.owner, save.sub)].append(save)
    for key in stored.keys() - per_key.keys():
        result.foreign += 1
        result.problem(f"{kind} {key} stored but never saved")
    for key, key_saves in per_key.items():
        acked = [s for s in key_saves if s.acked]
        row = stored.get(key)
        if row is None:
            result.lost += len(acked)
            if acked:
                result.problem(f"{kind} {key}: {len(acked)} acknowledged saves, no row")
            continue
        version, data = row
        made = {s.version: s for s in key_saves}.get(version)
        if made is None or made.payload != data:
            result.foreign += 1
            result.problem(f"{kind} {key}: stored version {version} is not what was saved")
        newest = max((s.version for s in acked), default="")
        if version < newest:
            result.stale += 1
            result.problem(f"{kind} {key}: stored {version} < newest acknowledged {newest}")
        result.applied += sum(1 for s in acked if s.version <= version)


def _conversations(result: Audit, saves: list[Save], store: PostgreSQLClient) -> None:
    per_conv: dict[str, list[Save]] = defaultdict(list)
    for save in saves:
        per_conv[save.owner].append(save)
    for conv, conv_saves in per_conv.items():
        history = store.get_conversation_history(conv)
        seen = Counter((m.get("t"), m.get("n")) for m in history)
        content = {(m.get("t"), m.get("n")): m for m in history}
        sent = {(s.thread, s.seq): s for s in conv_saves}
        for (t, n), count in seen.items():
            if (t, n) not in sent:
                result.foreign += count
                result.problem(f"conversation {conv}: message {(t, n)} never sent")
            elif count > 1:
                result.duplicated += count - 1
                result.problem(f"conversation {conv}: message {(t, n)} stored {count} times")
        for key, save in sent.items():
            if not save.acked:
                continue
            if seen[key]:
                result.applied += 1
                if content[key] != save.payload:
                    result.foreign += 1
                    result.problem(f"conversation {conv}: message {key} content changed")
            else:
                result.lost += 1
                result.problem(f"conversation {conv}: acknowledged message {key} missing")
        order: list[int] = [m["n"] for m in history]  # every message the load sends has one
        inversions = sum(1 for a, b in itertools.pairwise(order) if a >= b)
        if inversions:
            result.out_of_order += inversions
            result.problem(f"conversation {conv}: {inversions} messages out of send order")


def _transactions(result: Audit, saves: list[Save], database: str) -> None:
    stored = {
        (case, txid): (version, position, data)
        for case, txid, version, position, data in cast(
            list[tuple[str, str, str, str, dict[str, Any]]],
            rows(
                database,
                "SELECT case_id, transaction->>'id', version, position, transaction "
                "FROM transactions",
            ),
        )
    }
    # Every transaction a save carried, under the id it is stored with: its own, or for an
    # acknowledged op the one the worker derives ("<op id>-<index>").
    items: dict[tuple[str, str], list[tuple[Save, int, dict[str, Any]]]] = defaultdict(list)
    markers: Counter[tuple[Any, ...]] = Counter()
    sent_markers: set[tuple[Any, ...]] = set()
    for save in saves:
        for index, txn in enumerate(save.payload):
            sent_markers.add((save.owner, txn["t"], txn["n"], txn["i"]))
            txid = txn.get("id") or (f"{save.op_id}-{index}" if save.acked else None)
            if txid is not None:
                items[(save.owner, txid)].append((save, index, {**txn, "id": txid}))
    for (case, _), (_, _, data) in stored.items():
        markers[(case, data.get("t"), data.get("n"), data.get("i"))] += 1
    for marker, count in markers.items():
        if marker not in sent_markers:
            result.foreign += count
            result.problem(f"transaction {marker} stored but never sent")
        elif count > 1:  # each marker is one item of one save: stored twice is a duplicate
            result.duplicated += count - 1
            result.problem(f"transaction {marker} (id assigned by the worker) stored {count} times")
    for key, entries in items.items():
        acked = [(s, i, t) for s, i, t in entries if s.acked]
        row = stored.get(key)
        if row is None:
            result.lost += len(acked)
            if acked:
                result.problem(f"transaction {key}: {len(acked)} acknowledged saves, no row")
            continue
        version, position, data = row
        made = [t for s, _, t in entries if s.version == version]
        if not made or made[0] != data:
            result.foreign += 1
            result.problem(f"transaction {key}: stored version {version} is not what was saved")
        newest = max((s.version for s, _, _ in acked), default="")
        if version < newest:
            result.stale += 1
            result.problem(f"transaction {key}: stored {version} < newest acknowledged {newest}")
        # It keeps the place of its first save: one that was made, no later than the first
        # acknowledged one (an earlier unacknowledged save may have landed too).
        places = {f"{s.version} {i:05d}" for s, i, _ in entries}
        first_acked = min((f"{s.version} {i:05d}" for s, i, _ in acked), default=position)
        if position not in places or position > first_acked:
            result.out_of_order += 1
            result.problem(f"transaction {key}: position {position} is not its first save")
    # A save is applied when every transaction it carried is stored at its version or newer.
    for save in saves:
        if save.acked:
            keys = [
                (save.owner, txn.get("id") or f"{save.op_id}-{i}")
                for i, txn in enumerate(save.payload)
            ]
            versions = [stored[k][0] if k in stored else "" for k in keys]
            result.applied += all(v >= save.version for v in versions)
