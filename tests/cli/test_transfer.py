"""`agentstore export` and `agentstore import` against real PostgreSQL databases (and memory)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import psycopg2

from agentstore_cli.transfer import (
    FIELDS,
    TOMBSTONE_FIELDS,
    BadLine,
    export_records,
    import_records,
    parse_line,
)
from storage import InMemoryStorageClient
from storage.records import Record, Tombstone
from tests.cli.conftest import (
    DELETE_VERSION,
    Cli,
    assert_deletes_hold,
    delete_partitions,
    open_store,
    same_reads,
    seed,
    snapshot,
)
from tests.services import fresh_pg_database

TABLES = ("agent_states", "agent_tasks", "conversations", "transactions")


def _row_versions(url: str) -> dict[str, list[tuple[str, str]]]:
    # xmin changes whenever PostgreSQL rewrites a row: equal xmins mean nothing was written.
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            out = {}
            for table in TABLES:
                cur.execute(f"SELECT id, xmin::text FROM {table} ORDER BY id")
                out[table] = cur.fetchall()
            return out
    finally:
        conn.close()


def test_export_then_import_into_a_fresh_database_reads_the_same_and_reimport_is_a_no_op(
    run: Cli, pg_url: str, tmp_path: Path
) -> None:
    with open_store({"POSTGRES_CONNECTION_STRING": pg_url}) as source:
        seed(source)
        dump = tmp_path / "dump.jsonl"
        result = run(
            ["export", "--page-size", "100", "-o", str(dump)],
            {"POSTGRES_CONNECTION_STRING": pg_url},
        )
        assert result.exit_code == 0, result.stderr
        assert "exported 1,590 records" in result.stderr
        assert not (tmp_path / "dump.jsonl.partial").exists()
        lines = dump.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 1_590
        assert list(json.loads(lines[0])) == list(FIELDS)

        with fresh_pg_database("agentstore_cli") as target_url:
            config = {"POSTGRES_CONNECTION_STRING": target_url}
            result = run(["import", str(dump), "--page-size", "64"], config)
            assert result.exit_code == 0, result.stderr
            assert "imported 1,590 records" in result.stderr
            with open_store(config) as target:
                assert snapshot(target) == snapshot(source)
                same_reads(source, target)
            before = _row_versions(target_url)
            again = run(["import", "-", "--page-size", "500"], config, input=dump.read_bytes())
            assert again.exit_code == 0, again.stderr
            assert _row_versions(target_url) == before
            # And the export of the copy is the very same file, line for line.
            assert run(["export"], config).stdout_bytes == dump.read_bytes()


def test_export_and_import_carry_partition_tombstones(
    run: Cli, pg_url: str, tmp_path: Path
) -> None:
    config = {"POSTGRES_CONNECTION_STRING": pg_url}
    with open_store(config) as source:
        delete_partitions(source)
        source.save_state("kept", "s", {"n": 1})
        dump = tmp_path / "dump.jsonl"
        result = run(["export", "-o", str(dump)], config)
        assert result.exit_code == 0, result.stderr
        assert "exported 4 records (tombstone 3, state 1," in result.stderr
        lines = [json.loads(line) for line in dump.read_text(encoding="utf-8").splitlines()]
        assert lines[:3] == [
            dict(zip(TOMBSTONE_FIELDS, ("tombstone", scope, key, DELETE_VERSION), strict=True))
            for scope, key in (("agent", "ag"), ("case", "cs"), ("conversation", "cv"))
        ]
        with fresh_pg_database("agentstore_cli") as target_url:
            target = {"POSTGRES_CONNECTION_STRING": target_url}
            result = run(["import", str(dump), "--page-size", "2"], target)
            assert result.exit_code == 0, result.stderr
            assert "imported 4 records (tombstone 3, state 1," in result.stderr
            with open_store(target) as copy:
                assert copy.get_state("kept", "s") == {"n": 1}
                assert_deletes_hold(copy)
            assert_deletes_hold(source)


def test_export_help_names_every_field_it_writes(run: Cli) -> None:
    result = run(["export", "--help"], {})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "{" + ", ".join(FIELDS) + "}" in text
    assert "{" + ", ".join(TOMBSTONE_FIELDS) + "}" in text


def test_an_in_memory_store_exports_to_postgresql_and_imports_from_it(
    run: Cli, pg_url: str, tmp_path: Path
) -> None:
    memory = InMemoryStorageClient()
    seed(memory)
    memory.save_state("gone", "s", {"x": 1})
    memory.delete_state("gone", "s")
    dump = io.BytesIO()
    assert sum(export_records(memory, dump, page_size=100).values()) == 1_591
    path = tmp_path / "memory.jsonl"
    path.write_bytes(dump.getvalue())
    config = {"POSTGRES_CONNECTION_STRING": pg_url}
    result = run(["import", str(path), "--page-size", "64"], config)
    assert result.exit_code == 0, result.stderr
    assert "imported 1,591 records" in result.stderr
    with open_store(config) as store:
        assert snapshot(store) == snapshot(memory)
        same_reads(memory, store)
        assert store.get_state("gone", "s") is None
    back = InMemoryStorageClient()
    exported = run(["export"], config).stdout_bytes
    assert import_records(back, exported.splitlines(), page_size=100).records == 1_591
    assert snapshot(back) == snapshot(memory)
    assert back.list_states("gone") == []


def test_export_streams_selected_kinds_to_stdout(run: Cli, pg_url: str) -> None:
    config = {"POSTGRES_CONNECTION_STRING": pg_url}
    with open_store(config) as store:
        seed(store, messages=10)
    result = run(["export", "--kinds", "transaction,state", "--page-size", "7"], config)
    assert result.exit_code == 0, result.stderr
    kinds = [json.loads(line)["kind"] for line in result.stdout.splitlines()]
    assert kinds == ["state"] * 120 + ["transaction"] * 300
    assert "state 120, transaction 300" in result.stderr


def test_a_bad_line_stops_the_import_naming_it_and_keeps_earlier_pages(
    run: Cli, pg_url: str, tmp_path: Path
) -> None:
    config = {"POSTGRES_CONNECTION_STRING": pg_url}
    with open_store(config) as store:
        seed(store, messages=20)
    good = run(["export", "--kinds", "state"], config).stdout.splitlines()
    bad_record = json.loads(good[0]) | {"row_id": "", "sub_id": "x"}
    lines = [*good[:25], json.dumps(bad_record), *good[25:]]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with fresh_pg_database("agentstore_cli") as target_url:
        target = {"POSTGRES_CONNECTION_STRING": target_url}
        result = run(["import", str(path), "--page-size", "10"], target)
        assert result.exit_code == 1
        assert "line 26: row_id must not be empty" in result.stderr
        assert "20 records from earlier lines were written" in result.stderr
        assert "Traceback" not in result.stderr
        with open_store(target) as store:
            assert sum(len(p) for p in [store.scan_records("state", limit=1000)]) == 20
        dry = run(["import", "--dry-run", str(path)], target)
        assert dry.exit_code == 1 and "line 26" in dry.stderr
        assert "nothing was written" in dry.stderr


def test_parse_line_says_what_is_wrong() -> None:
    good = {
        "kind": "state",
        "row_id": "a|s",
        "partition": "a",
        "sub_id": "s",
        "data": {"x": 1},
        "version": "001.000000.abc",
        "position": "001.000000.abc",
    }
    record = parse_line(json.dumps(good), 1)
    assert isinstance(record, Record) and record.data == {"x": 1}
    assert record.deleted is False, "older files have no 'deleted'"
    deleted = parse_line(json.dumps({**good, "deleted": True}), 1)
    assert isinstance(deleted, Record) and deleted.deleted is True
    cases = {
        "{": "not JSON",
        "[1]": "expected a JSON object",
        json.dumps({**good, "extra": 1}): "unknown 'extra'",
        json.dumps({k: v for k, v in good.items() if k != "data"}): "missing data",
        json.dumps({**good, "kind": "blob"}): "kind must be one of",
        json.dumps({**good, "data": [1]}): "data must be a dict",
        json.dumps({**good, "data": {"big": 2**60}}): "outside",
        json.dumps({**good, "partition": "x" * 300}): "partition is 300 characters",
        json.dumps({**good, "version": "no spaces"}): "version must be",
        json.dumps({**good, "position": 5}): "position must be",
        json.dumps({**good, "deleted": "yes"}): "deleted must be true or false",
    }
    for text, reason in cases.items():
        try:
            parse_line(text, 7)
        except BadLine as exc:
            assert exc.line == 7 and reason in str(exc), (text, str(exc))
        else:
            raise AssertionError(f"accepted {text}")
    tombstone = {"kind": "tombstone", "scope": "case", "key": "c|1", "version": "0002"}
    assert parse_line(json.dumps(tombstone), 1) == Tombstone("case", "c|1", "0002")
    bad_tombstones = {
        json.dumps({**tombstone, "scope": "planet"}): "scope must be one of agent,",
        json.dumps({**tombstone, "key": ""}): "key must not be empty",
        json.dumps({**tombstone, "version": "a b"}): "version must be",
        json.dumps({**tombstone, "deleted": True}): "unknown 'deleted'",
        json.dumps({k: v for k, v in tombstone.items() if k != "version"}): "missing version",
    }
    for text, reason in bad_tombstones.items():
        try:
            parse_line(text, 2)
        except BadLine as exc:
            assert reason in str(exc), (text, str(exc))
        else:
            raise AssertionError(f"accepted {text}")
    try:
        parse_line(b"\xff\xfe", 3)
    except BadLine as exc:
        assert "line 3: not valid UTF-8" in str(exc)


def test_bad_arguments_are_usage_errors_and_missing_config_is_one_line(
    run: Cli, tmp_path: Path
) -> None:
    for args in (
        ["export", "--page-size", "0"],
        ["export", "--kinds", "state,blob"],
        ["import", str(tmp_path / "missing.jsonl")],
        ["migrate"],
        ["migrate", "--to-env", str(tmp_path / "missing.env")],
        ["dlq", "replay"],
        ["nonsense"],
    ):
        result = run(args, {})
        assert result.exit_code == 2, (args, result.stderr)
        assert "Usage:" in result.stderr
    result = run(["export"], {})
    assert result.exit_code == 1
    assert result.stderr.startswith("agentstore: store: no storage backend configured")
    assert len(result.stderr.strip().splitlines()) == 1


def test_export_to_a_file_that_fails_leaves_no_file(run: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    bad = {"POSTGRES_CONNECTION_STRING": "postgresql://postgres@127.0.0.1:1/nowhere"}
    result = run(["export", "-o", str(out)], bad)
    assert result.exit_code == 1
    assert "cannot connect to PostgreSQL" in result.stderr
    assert not out.exists() and not (tmp_path / "out.jsonl.partial").exists()
