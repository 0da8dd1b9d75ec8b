"""`agentstore migrate` between the real servers: PostgreSQL <-> Cosmos DB test server."""

from __future__ import annotations

import io
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import agentstore_cli.migrate as migrate_module
from agentstore_cli.migrate import CHECKPOINT_DIR, KindCheck, migrate_stores, plan_migration
from agentstore_cli.progress import LineProgress
from agentstore_cli.stores import target_settings
from agentstore_cli.transfer import kind_of
from agentstore_cli.transfer import write_page as real_write_page
from storage.backends import describe, identity
from storage.base import StorageBackend
from storage.config import Settings, load_settings
from storage.errors import StorageError
from storage.factory import create_storage_client
from storage.records import Record, Tombstone
from tests.cli.conftest import (
    Cli,
    Cosmos,
    assert_deletes_hold,
    assert_no_secret,
    delete_partitions,
    env_file,
    open_store,
    same_reads,
    seed,
    snapshot,
)
from tests.services import fresh_pg_database

COUNTS = {"state": 120, "task": 120, "conversation": 1_050, "transaction": 300}


def checkpoints(cwd: Path) -> list[Path]:
    return sorted((cwd / CHECKPOINT_DIR).glob("*.json"))


def test_postgres_to_cosmos_and_back_copies_every_kind_exactly(
    run: Cli, pg_url: str, cosmos: Cosmos, tmp_path: Path
) -> None:
    pg = {"POSTGRES_CONNECTION_STRING": pg_url}
    cosmos_config = cosmos.config()
    with open_store(pg) as source:
        seed(source)
        expected = snapshot(source)
        to_cosmos = env_file(tmp_path / "cosmos.env", cosmos_config)
        result = run(["migrate", "--to-env", str(to_cosmos), "--page-size", "200"], pg)
        assert result.exit_code == 0, result.stderr
        for kind, n in COUNTS.items():
            assert f"source {n:>10,}  target {n:>10,}  OK" in result.stdout, kind
        assert "migration complete" in result.stderr
        assert checkpoints(tmp_path) == []  # removed once the count check passed
        with open_store(cosmos_config) as copy:
            assert snapshot(copy) == expected
            same_reads(source, copy)

        # Running it again changes nothing and still checks out.
        again = run(["migrate", "--to-env", str(to_cosmos)], pg)
        assert again.exit_code == 0, again.stderr
        assert f"source {1_050:>10,}  target {1_050:>10,} ({1_050:,} before)  OK" in again.stdout

        with fresh_pg_database("agentstore_cli") as back_url:
            to_pg = env_file(tmp_path / "pg.env", {"POSTGRES_CONNECTION_STRING": back_url})
            result = run(["migrate", "--to-env", str(to_pg)], cosmos_config)
            assert result.exit_code == 0, result.stderr
            with open_store({"POSTGRES_CONNECTION_STRING": back_url}) as back:
                assert snapshot(back) == expected
                same_reads(source, back)


def test_tombstones_migrate_both_ways_and_keep_refusing_older_saves(
    run: Cli, pg_url: str, cosmos: Cosmos, tmp_path: Path
) -> None:
    pg = {"POSTGRES_CONNECTION_STRING": pg_url}
    cosmos_config = cosmos.config()
    tombstones_ok = f"tombstone    source {3:>10,}  target {3:>10,}  OK"
    with open_store(pg) as source:
        delete_partitions(source)
        source.save_state("kept", "s", {"n": 1})
    to_cosmos = env_file(tmp_path / "cosmos.env", cosmos_config)
    result = run(["migrate", "--to-env", str(to_cosmos), "--page-size", "2"], pg)
    assert result.exit_code == 0, result.stderr
    assert tombstones_ok in result.stdout
    with open_store(cosmos_config) as copy:
        assert copy.get_state("kept", "s") == {"n": 1}
        assert_deletes_hold(copy)
    with fresh_pg_database("agentstore_cli") as back_url:
        to_pg = env_file(tmp_path / "pg.env", {"POSTGRES_CONNECTION_STRING": back_url})
        result = run(["migrate", "--to-env", str(to_pg), "--page-size", "2"], cosmos_config)
        assert result.exit_code == 0, result.stderr
        assert tombstones_ok in result.stdout
        with open_store({"POSTGRES_CONNECTION_STRING": back_url}) as back:
            assert back.get_state("kept", "s") == {"n": 1}
            assert_deletes_hold(back)
    with open_store(pg) as source:
        assert_deletes_hold(source)


def test_a_failing_target_leaves_a_checkpoint_and_the_same_command_resumes(
    run: Cli, pg_url: str, cosmos: Cosmos, tmp_path: Path
) -> None:
    pg = {"POSTGRES_CONNECTION_STRING": pg_url}
    cosmos_config = cosmos.config()
    to_cosmos = env_file(tmp_path / "cosmos.env", cosmos_config)
    with open_store(pg) as source, open_store(cosmos_config) as target:
        seed(source)
        plan = plan_migration(
            load_settings(_env_file=None, **pg_lower(pg)), target_settings(to_cosmos)
        )
        writes: list[int] = []
        real_write = target.write_records

        def failing_write(grouped: Any, tombstones: Any = ()) -> None:
            if len(writes) == 7:  # states 2 pages, tasks 2, then 3 pages of conversations
                raise StorageError("target went away (test)")
            real_write(grouped, tombstones)
            writes.append(sum(len(v) for v in grouped.values()))

        target.write_records = failing_write  # type: ignore[method-assign,assignment]
        with pytest.raises(StorageError, match="went away"):
            migrate_stores(source, target, plan, page_size=100)
        saved = json.loads(plan.path.read_text())
        assert saved["kinds"]["state"]["copied"] == 120 and saved["kinds"]["state"]["done"]
        assert saved["kinds"]["conversation"]["copied"] == 300
        assert not saved["kinds"]["conversation"]["done"]
        assert_no_secret(plan.path.read_text())

        result = run(["migrate", "--to-env", str(to_cosmos), "--page-size", "100"], pg)
        assert result.exit_code == 0, result.stderr
        assert "resuming from checkpoint" in result.stderr
        assert "state: already copied (120 records)" in result.stderr
        assert "task: already copied (120 records)" in result.stderr
        assert not plan.path.exists()
        assert snapshot(target) == snapshot(source)
        same_reads(source, target)


def pg_lower(config: dict[str, str]) -> dict[str, Any]:
    return {"postgres_connection_string": config["POSTGRES_CONNECTION_STRING"]}


def _stop_when_copied(
    run: Cli, args: list[str], config: dict[str, str], at: int, sig: int
) -> tuple[int, str, dict[str, Any]]:
    """Run the CLI as a process; send `sig` once the checkpoint shows `at` messages copied."""
    proc = run.subprocess(args, config)
    progress: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            found = checkpoints(run.cwd)
            if found:
                try:
                    progress = json.loads(found[0].read_text())["kinds"].get("conversation", {})
                except (ValueError, OSError):
                    progress = {}  # caught between write and rename: look again
                if progress.get("copied", 0) >= at:
                    break
            time.sleep(0.01)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    saved = json.loads(checkpoints(run.cwd)[0].read_text())["kinds"]["conversation"]
    return proc.returncode, stderr.decode(), saved


def test_an_interrupted_then_killed_migration_resumes_and_every_record_arrives_once(
    run: Cli, pg_url: str, cosmos: Cosmos, tmp_path: Path
) -> None:
    pg = {"POSTGRES_CONNECTION_STRING": pg_url}
    cosmos_config = cosmos.config()
    to_cosmos = env_file(tmp_path / "cosmos.env", cosmos_config)
    with open_store(pg) as source:
        seed(source)
    args = ["migrate", "--to-env", str(to_cosmos), "--page-size", "50"]
    code, stderr, saved = _stop_when_copied(run, args, pg, 200, signal.SIGINT)
    assert code == 130, stderr
    assert "interrupted; run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    assert 200 <= saved["copied"] < 1_050 and not saved["done"]

    code, stderr, saved = _stop_when_copied(run, args, pg, saved["copied"] + 200, signal.SIGKILL)
    assert code == -signal.SIGKILL, stderr
    assert "resuming from checkpoint" in stderr
    assert saved["copied"] < 1_050 and not saved["done"]

    result = run(args, pg)
    assert result.exit_code == 0, result.stderr
    assert "resuming from checkpoint" in result.stderr
    for kind, n in COUNTS.items():
        assert f"source {n:>10,}  target {n:>10,}  OK" in result.stdout, kind
    with open_store(pg) as source, open_store(cosmos_config) as target:
        assert snapshot(target) == snapshot(source)
        for c in range(4):
            history = target.get_conversation_history(f"conv-{c}")
            assert [m["n"] for m in history] == list(range(c, 1_050, 4))


def test_a_count_mismatch_exits_non_zero_and_a_rerun_copies_again(
    run: Cli, pg_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pg = {"POSTGRES_CONNECTION_STRING": pg_url}
    with open_store(pg) as source:
        seed(source, messages=30)

    def lossy(store: StorageBackend, page: list[Record | Tombstone]) -> None:
        if kind_of(page[0]) == "conversation":
            page = page[1:]  # loses one message per page
        real_write_page(store, page)

    with fresh_pg_database("agentstore_cli") as target_url:
        to_pg = env_file(tmp_path / "t.env", {"POSTGRES_CONNECTION_STRING": target_url})
        monkeypatch.setattr(migrate_module, "write_page", lossy)
        result = run(["migrate", "--to-env", str(to_pg), "--page-size", "10"], pg)
        assert result.exit_code == 1
        assert f"conversation source {30:>10,}  target {27:>10,}  MISMATCH" in result.stdout
        assert "count check failed for conversation" in result.stderr
        assert len(checkpoints(tmp_path)) == 1  # kept: the counts before stay known

        monkeypatch.setattr(migrate_module, "write_page", real_write_page)
        result = run(["migrate", "--to-env", str(to_pg), "--page-size", "10"], pg)
        assert result.exit_code == 0, result.stdout + result.stderr
        assert "copying everything again" in result.stderr
        assert f"conversation source {30:>10,}  target {30:>10,}  OK" in result.stdout
        assert checkpoints(tmp_path) == []


def test_a_tombstone_missing_on_the_target_fails_the_count_check(
    run: Cli, pg_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pg = {"POSTGRES_CONNECTION_STRING": pg_url}
    with open_store(pg) as source:
        delete_partitions(source)

    def without_tombstones(store: StorageBackend, page: list[Record | Tombstone]) -> None:
        real_write_page(store, [item for item in page if isinstance(item, Record)])

    with fresh_pg_database("agentstore_cli") as target_url:
        to_pg = env_file(tmp_path / "t.env", {"POSTGRES_CONNECTION_STRING": target_url})
        monkeypatch.setattr(migrate_module, "write_page", without_tombstones)
        result = run(["migrate", "--to-env", str(to_pg)], pg)
        assert result.exit_code == 1
        assert f"tombstone    source {3:>10,}  target {0:>10,}  MISMATCH" in result.stdout
        assert "count check failed for tombstone" in result.stderr


def test_a_target_with_data_of_its_own_may_hold_more(run: Cli, pg_url: str, tmp_path: Path) -> None:
    pg = {"POSTGRES_CONNECTION_STRING": pg_url}
    with open_store(pg) as source:
        seed(source, messages=8)
    with fresh_pg_database("agentstore_cli") as target_url:
        target = {"POSTGRES_CONNECTION_STRING": target_url}
        with open_store(target) as store:
            store.save_conversation("elsewhere", {"n": 1})
        result = run(["migrate", "--to-env", str(env_file(tmp_path / "t.env", target))], pg)
        assert result.exit_code == 0, result.stderr
        assert f"conversation source {8:>10,}  target {9:>10,} (1 before)  OK" in result.stdout


def test_count_check_rules() -> None:
    assert KindCheck("state", 10, 10, 0).ok
    assert KindCheck("state", 10, 12, 5).ok
    assert not KindCheck("state", 10, 9, 5).ok  # a record is missing
    assert not KindCheck("state", 10, 16, 5).ok  # more than source + before: not ours
    assert not KindCheck("state", 10, 11, 0).ok


def test_refuses_to_migrate_a_store_onto_itself(
    run: Cli, pg_url: str, cosmos: Cosmos, tmp_path: Path
) -> None:
    same_db = pg_url.replace("127.0.0.1", "localhost").replace(":pg-S3cret-Pw@", ":other@")
    target = env_file(tmp_path / "same.env", {"POSTGRES_CONNECTION_STRING": same_db})
    result = run(["migrate", "--to-env", str(target)], {"POSTGRES_CONNECTION_STRING": pg_url})
    assert result.exit_code == 1
    assert "source and target are the same store" in result.stderr
    assert checkpoints(tmp_path) == []
    config = cosmos.config("samedb")
    result = run(["migrate", "--to-env", str(env_file(tmp_path / "c.env", config))], config)
    assert result.exit_code == 1 and "same store" in result.stderr
    empty = env_file(tmp_path / "empty.env", {"CELERY_BROKER_URL": "redis://127.0.0.1:6379/0"})
    result = run(["migrate", "--to-env", str(empty)], {"POSTGRES_CONNECTION_STRING": pg_url})
    assert result.exit_code == 1 and "target file configures no store" in result.stderr


def test_the_target_reads_only_its_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("COSMOS_DATABASE_NAME=from_dotenv\n")
    monkeypatch.setenv("POSTGRES_CONNECTION_STRING", "postgresql://u:p@db:5432/source")
    monkeypatch.setenv("COSMOS_DATABASE_NAME", "source_db")
    monkeypatch.setenv("COSMOS_MAX_CONCURRENCY", "3")
    path = tmp_path / "t.env"
    path.write_text(
        'export COSMOS_ENDPOINT="https://acct.documents.azure.com:443/"\ncosmos_key=a2V5\n'
    )
    settings = target_settings(path)
    assert settings.postgres_connection_string is None
    assert settings.cosmos_endpoint == "https://acct.documents.azure.com:443/"
    assert settings.cosmos_key is not None and settings.cosmos_key.get_secret_value() == "a2V5"
    assert settings.cosmos_database_name == "transaction_review"
    assert settings.cosmos_max_concurrency == 8
    assert identity(settings) == (
        "cosmos",
        "acct.documents.azure.com",
        "443",
        "transaction_review",
    )


def test_the_backend_named_decides_what_is_described_identified_and_counted(
    pg_url: str,
) -> None:
    with open_store({"POSTGRES_CONNECTION_STRING": pg_url}) as store:
        store.save_state("a", "s", {})

    def settings(backend: str | None) -> Settings:
        return load_settings(
            _env_file=None,
            agentstore_backend=backend,
            postgres_connection_string=pg_url,
            cosmos_endpoint="https://acct.documents.azure.com:443/",
            cosmos_key="a2V5",
        )

    assert describe(settings(None)).startswith("PostgreSQL")
    with create_storage_client(settings(None)) as store:
        assert store.count("state") == 1
    assert describe(settings("cosmos")).startswith("Cosmos DB https://acct.documents")
    assert identity(settings("cosmos"))[0] == "cosmos"
    assert describe(settings("memory")) == "in-memory store (this process only)"
    assert identity(settings("memory")) == ("memory",)
    with create_storage_client(settings("memory")) as store:
        assert store.count("state") == 0, "a store of its own, not PostgreSQL's"


def test_checkpoint_of_another_migration_is_refused_unless_restarted(
    run: Cli, pg_url: str, tmp_path: Path
) -> None:
    pg = {"POSTGRES_CONNECTION_STRING": pg_url}
    with open_store(pg) as source:
        seed(source, messages=4)
    other = tmp_path / "other.json"
    other.write_text(
        json.dumps({"format": 1, "migration": "0123", "source": "a", "target": "b", "kinds": {}})
    )
    with fresh_pg_database("agentstore_cli") as target_url:
        to_pg = env_file(tmp_path / "t.env", {"POSTGRES_CONNECTION_STRING": target_url})
        result = run(["migrate", "--to-env", str(to_pg), "--checkpoint", str(other)], pg)
        assert result.exit_code == 1 and "belongs to another migration (a -> b)" in result.stderr
        result = run(
            ["migrate", "--to-env", str(to_pg), "--checkpoint", str(other), "--restart"], pg
        )
        assert result.exit_code == 0, result.stderr
        assert not other.exists()


def test_progress_shows_rows_rate_and_eta_on_a_terminal() -> None:
    out = io.StringIO()
    progress = LineProgress(out, tty=True)
    progress.start("conversation", 1000, initial=100)
    progress.advance(400)
    progress.finish()
    text = out.getvalue()
    assert "\r" in text and text.endswith("\n")
    assert (
        "[##########----------]        500/1,000 rows ( 50.0%)" in text
        and "/s" in text
        and "ETA" in text
    )
    quiet = io.StringIO()
    progress = LineProgress(quiet, tty=False)
    progress.start("state", None)
    progress.advance(7)
    progress.finish()
    assert "\r" not in quiet.getvalue() and "7 rows" in quiet.getvalue()


def test_progress_off_a_terminal_is_plain_periodic_lines_without_a_bar() -> None:
    log = io.StringIO()
    progress = LineProgress(log, tty=False, every=0)  # a line at every page
    progress.start("conversation", 1000)
    progress.advance(400)
    progress.advance(600)
    progress.finish()
    lines = log.getvalue().splitlines()
    assert len(lines) == 3 and all(line.startswith("conversation ") for line in lines)
    assert "400/1,000 rows ( 40.0%)" in lines[0] and "1,000/1,000 rows (100.0%)" in lines[2]
    assert not any(c in log.getvalue() for c in "\r\x1b#[")
    quiet = io.StringIO()
    progress = LineProgress(quiet, tty=False)  # every 30 s: a short copy shows its end only
    progress.start("state", 5)
    progress.advance(5)
    progress.finish()
    assert quiet.getvalue().count("\n") == 1 and "5/5 rows" in quiet.getvalue()


def test_migrate_draws_no_bar_when_stderr_is_not_a_terminal(
    run: Cli, pg_url: str, tmp_path: Path
) -> None:
    pg = {"POSTGRES_CONNECTION_STRING": pg_url}
    with open_store(pg) as source:
        seed(source, messages=8)
    with fresh_pg_database("agentstore_cli") as target_url:
        to_pg = env_file(tmp_path / "t.env", {"POSTGRES_CONNECTION_STRING": target_url})
        result = run(["migrate", "--to-env", str(to_pg)], pg)  # CliRunner: not a terminal
        assert result.exit_code == 0, result.stderr
        assert "[#" not in result.stderr and "\r" not in result.stderr
        assert "state        " in result.stderr and "120/120 rows (100.0%)" in result.stderr


def test_restart_copies_from_the_start_and_keeps_the_counts_before_the_first_run(
    run: Cli, pg_url: str, tmp_path: Path
) -> None:
    pg = {"POSTGRES_CONNECTION_STRING": pg_url}
    with open_store(pg) as source:
        seed(source, messages=30)
    with fresh_pg_database("agentstore_cli") as target_url:
        to_pg = env_file(tmp_path / "t.env", {"POSTGRES_CONNECTION_STRING": target_url})
        target_config = {"POSTGRES_CONNECTION_STRING": target_url}
        plan = plan_migration(load_settings(_env_file=None, **pg_lower(pg)), target_settings(to_pg))
        with open_store(target_config) as target:
            real_write, calls = target.write_records, []

            def fail_third(grouped: Any, tombstones: Any = ()) -> None:
                calls.append(1)
                if len(calls) == 3:
                    raise StorageError("target went away (test)")
                real_write(grouped, tombstones)

            target.write_records = fail_third  # type: ignore[method-assign,assignment]
            with pytest.raises(StorageError):
                migrate_stores(source_store := open_store(pg), target, plan, page_size=100)
            source_store.close()
        result = run(["migrate", "--to-env", str(to_pg), "--restart"], pg)
        assert result.exit_code == 0, result.stderr
        assert "resuming" not in result.stderr
        assert "before" not in result.stdout  # the partial copy is not the target's own data
        assert f"state        source {120:>10,}  target {120:>10,}  OK" in result.stdout
