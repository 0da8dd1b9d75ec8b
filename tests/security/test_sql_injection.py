"""SQL injection: hostile strings in every field are data, and no query is built from values.

Every query takes values as parameters (`%s` for psycopg2, `@name` for Cosmos DB). The
f-strings that do build SQL interpolate only names fixed in the code: the allow-list below
says which and why, and the scan fails on any other.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from storage import StorageClient
from storage.ids import ESCAPES
from tests.property.strategies import SQL_INJECTION, assert_exact

ROOT = Path(__file__).resolve().parents[2]
SCANNED = [
    *sorted((ROOT / "storage").glob("*.py")),
    *sorted((ROOT / "agentstore_cli").glob("*.py")),
]
_SQL = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|WHERE|FROM|VALUES|SET)\b"
    r"|replace\(|lpad\(|coalesce\(|\bc\.\w*\s*=|ARRAY_CONTAINS|ORDER BY"
)
# (file, interpolated expression) -> why it cannot carry a caller's value.
_CONSTANT = {
    "storage/postgres.py": {
        "CREATE_INCOMING": "a constant DDL statement from storage.postgres_sql",
        "SCANS[kind]": "a column list from the constant SCANS",
        "part": "a partition column name from the kinds table in storage.records",
        "order": "'ASC' or 'DESC'",
    },
    "storage/postgres_sql.py": {
        # Statements built once, at import, by _guarded/_keyed/_erase/_scan from the kinds
        # table (storage.records: literal table, column and scope names) and literal column
        # and conflict clauses; rows travel by COPY into the constant temporary table.
        **dict.fromkeys(
            (
                "spec.name",
                "spec.partition",
                "spec.sub_id",
                "spec.payload",
                "_CONV.name",
                "_CONV.partition",
                "_TASKS.name",
                "_TASKS.payload",
                "_TXN",
                "STORED_AS[kind]",
                "KIND_SPECS[kind].name",
                "STORED_AS['transaction']",
                "TOMBSTONE_TABLE",
                "table",
            ),
            "a name from the kinds table in storage.records",
        ),
        **dict.fromkeys(
            ("names", "extra", "sub_id", "position", "deleted", "on_conflict"),
            "column lists and clauses assembled from those names and literals",
        ),
        "INCOMING": "a constant table name",
        "kind": "a Kind literal, a key of UPSERTS, compared as a SQL string literal",
        "spec.scope": "a Scope literal ('agent', 'conversation', 'case', 'thread') of the kinds",
        "_AGE": "a constant with a %s parameter",
        "key": "'id' or 'ctid'",
        "select": "a query from the constant _PRUNE_SELECTS",
        "overwrite": "a literal condition on a payload column named in the kinds table",
    },
    "storage/postgres_reads.py": {
        # The checkpoint read (`load_checkpoints`): one statement per `where`, cached.
        **dict.fromkeys(
            (
                "_CP.name",
                "_CP.payload",
                "_BLOB.name",
                "_BLOB.payload",
                "_WRITE.name",
            ),
            "a name from the kinds table in storage.records",
        ),
        **dict.fromkeys(
            (
                "_columns('checkpoint', 't')",
                "_columns('checkpoint_blob', 'y')",
                "_columns('checkpoint_blob', 'p')",
                "_columns('checkpoint_write', 'w')",
            ),
            "a column list of those names and a literal alias",
        ),
        "_escaped('v.ch')": "storage.ids.ESCAPES as replace() calls on a literal column",
        "_escaped('v.ver')": "the same",
        "where": "one of three literal conditions; values are %s parameters",
        "'1' if newest else '%s'": "a literal limit, or the limit as a parameter",
    },
    "storage/cosmos.py": {
        "layout.partition_field": "a field name from the constant layouts",
        "container.layout.partition_field": "the same",
        "pf": "the same",
        "sf": "a sub-id field name from the constant layouts",
        "LIVE": "a constant condition",
        "where": "a clause built just above from those names; values are @parameters",
        "top": "'' or 'TOP @n ' (the number is a parameter)",
        "'DESC' if descending else 'ASC'": "a literal",
    },
    "storage/cosmos_retention.py": {
        "_AGED": "a constant with an @parameter",
        "_OURS": "a constant condition",
        "container.handle": "a projection of field names checked against the layouts",
        "container.layout.partition_field": "a field name from the constant layouts",
        "conv": "the same",
        "mine": "a constant condition",
        "where": "a clause of those names and constants; values are @parameters",
    },
    "storage/postgres_schema.py": dict.fromkeys(
        # Migrations: DDL assembled once, at import, from literals and storage.ids.ESCAPES.
        (
            "timestamp",
            "millis",
            "table",
            "_version_from('timestamp')",
            "new_id",
            "_TXN_ROW_ID",
            "expr",
            "char",
            "replacement",
            "key",
            "payload",
        ),
        "import-time DDL from literals",
    ),
}
ALLOWED = {(file, expr): why for file, exprs in _CONSTANT.items() for expr, why in exprs.items()}


def sql_built_from(source: str) -> tuple[set[str], list[str]]:
    """Expressions interpolated into SQL-looking f-strings, and SQL built with `%`/`+`/`.format`."""
    interpolated: set[str] = set()
    formatted: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr):
            text = "".join(
                v.value
                for v in node.values
                if isinstance(v, ast.Constant) and isinstance(v.value, str)
            )
            if _SQL.search(text):
                interpolated |= {
                    ast.unparse(v.value) for v in node.values if isinstance(v, ast.FormattedValue)
                }
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
            sides = (node.left, node.right)
            if any(isinstance(s, ast.Constant) and _SQL.search(str(s.value)) for s in sides):
                formatted.append(ast.unparse(node))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "format"
            and isinstance(node.func.value, ast.Constant)
            and _SQL.search(str(node.func.value.value))
        ):
            formatted.append(ast.unparse(node))
    return interpolated, formatted


def test_sql_is_built_only_from_names_fixed_in_the_code() -> None:
    found: set[tuple[str, str]] = set()
    for path in SCANNED:
        interpolated, formatted = sql_built_from(path.read_text())
        name = str(path.relative_to(ROOT))
        assert not formatted, f"{name}: SQL built by string formatting: {formatted}"
        found |= {(name, expr) for expr in interpolated}
    assert found <= ALLOWED.keys(), f"values interpolated into SQL: {found - ALLOWED.keys()}"
    # Every entry still describes real code; stale ones would hide a new, unchecked one.
    assert ALLOWED.keys() <= found, f"stale allow-list entries: {ALLOWED.keys() - found}"


def test_the_scan_finds_a_value_in_sql() -> None:
    bad = """
def get(cur, agent_id):
    cur.execute(f"SELECT state FROM agent_states WHERE agent_id = '{agent_id}'")
    cur.execute("SELECT state FROM agent_states WHERE agent_id = '%s'" % agent_id)
    cur.execute("SELECT state FROM agent_states WHERE agent_id = '{}'".format(agent_id))
    q = f"SELECT * FROM c WHERE c.agent_id = '{agent_id}'"
"""
    interpolated, formatted = sql_built_from(bad)
    assert interpolated == {"agent_id"} and len(formatted) == 2


def test_escapes_interpolated_into_the_migration_sql_hold_no_quote() -> None:
    assert not any("'" in k or "'" in v for k, v in ESCAPES.items())


@pytest.mark.parametrize("evil", SQL_INJECTION)
def test_injection_strings_in_every_field_round_trip(store: StorageClient, evil: str) -> None:
    payload = {evil: evil, "nested": [evil, {evil: [evil]}]}
    store.save_state(evil, evil, payload)
    store.save_task(evil, evil, payload)
    store.save_conversation(evil, payload)
    store.save_transactions(evil, [{**payload, "id": evil}, {"id": f"{evil}2", "x": evil}])
    assert_exact(store.get_state(evil, evil), payload)
    assert_exact(store.get_task(evil, evil), payload)
    assert_exact(store.get_conversation_history(evil), [payload])
    assert_exact(
        store.get_transactions(evil), [{**payload, "id": evil}, {"id": f"{evil}2", "x": evil}]
    )


@pytest.mark.parametrize("evil", ["' OR 'a'='a", "x' OR 1=1 --", "%", "_", "*"])
def test_injection_strings_in_reads_match_nothing_else(store: StorageClient, evil: str) -> None:
    store.save_state("victim", "secret-state", {"private": True})
    store.save_conversation("victim-conv", {"private": True})
    store.save_transactions("victim-case", [{"id": "t", "private": True}])
    assert store.get_state(evil, evil) is None
    assert store.get_state("victim", evil) is None
    assert store.get_task(evil, "secret-state") is None
    assert store.get_conversation_history(evil) == []
    assert store.get_transactions(evil) == []
    assert store.get_state("victim", "secret-state") == {"private": True}, "tables intact"
