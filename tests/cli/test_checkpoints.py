"""The CLI carries LangGraph checkpoints: export / import, migrate, `erase --thread`, and
retention (`prune`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from storage import checkpoint_reads
from storage.config import load_settings
from storage.ops import Op, make_op
from storage.records import KINDS
from tests.cli.conftest import Cli, Cosmos, env_file, open_store, snapshot
from tests.plugin import WorkerFactory
from tests.services import fresh_pg_database

_BIG = "QUJD" * 500_000  # 2 MB of base64: split across rows


def _thread_ops(thread_id: str) -> list[Op]:
    ops: list[Op] = []
    parent = None
    for n in range(3):
        cid = f"cp{n}"
        blob = {"type": "bytes", "data": _BIG if n == 1 else "AAEC"}
        args = {
            "thread_id": thread_id,
            "checkpoint_ns": "",
            "checkpoint_id": cid,
            "parent_checkpoint_id": parent,
            "checkpoint": {"type": "msgpack", "data": "gA=="},
            "metadata": {"type": "msgpack", "data": "gA=="},
            "channel_versions": {"messages": str(n)},
            "blobs": [{"channel": "messages", "version": str(n), **blob}],
        }
        ops.append(make_op("put_checkpoint", args))
        write = {"idx": 0, "channel": "messages", "type": "bytes", "data": "AAEC"}
        writes = {
            "thread_id": thread_id,
            "checkpoint_ns": "",
            "checkpoint_id": cid,
            "task_id": "task",
            "task_path": "",
            "writes": [write],
        }
        ops.append(make_op("put_writes", writes))
        parent = cid
    return ops


def test_export_import_carry_checkpoints_and_erase_thread_removes_them(
    run: Cli, pg_url: str, tmp_path: Path
) -> None:
    config = {"POSTGRES_CONNECTION_STRING": pg_url}
    with open_store(config) as source:
        source.apply(_thread_ops("thread-a") + _thread_ops("thread-b"))
        dump = tmp_path / "dump.jsonl"
        assert run(["export", "-o", str(dump)], config).exit_code == 0
        with fresh_pg_database("agentstore_cli") as target_url:
            copy = {"POSTGRES_CONNECTION_STRING": target_url}
            result = run(["import", str(dump)], copy)
            assert result.exit_code == 0, result.stderr
            with open_store(copy) as target:
                assert snapshot(target) == snapshot(source)
                assert len(checkpoint_reads.checkpoints(target, "thread-a", "")) == 3

        erased = run(["erase", "--thread", "thread-a", "--yes"], config)
        assert erased.exit_code == 0, erased.stderr
        assert "erased 3 checkpoint(s) of thread 'thread-a'" in erased.stdout
        assert checkpoint_reads.checkpoints(source, "thread-a", None) == []
        assert len(checkpoint_reads.checkpoints(source, "thread-b", None)) == 3


def test_prune_dry_run_lists_per_kind_then_retention_keeps_the_newest(
    run: Cli, pg_url: str
) -> None:
    config = {"POSTGRES_CONNECTION_STRING": pg_url, "AGENTSTORE_RETAIN_CHECKPOINTS": "1"}
    with open_store(config) as store:
        store.apply(_thread_ops("thread-a") + _thread_ops("thread-b"))
        live = len(store.read_rows("checkpoint_blob", "thread-a", "thread-a|"))
        assert live > 3, "cp1's blob is split across rows"
        dry = run(["prune", "--dry-run"], config)
        assert dry.exit_code == 0, dry.stderr
        for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
            assert f"{table}:over_count: would remove 4" in dry.stdout, dry.stdout
        assert len(checkpoint_reads.checkpoints(store, "thread-a", None)) == 3
        done = run(["prune"], config)
        assert done.exit_code == 0, done.stderr
        assert "checkpoints:over_count: removed 4" in done.stdout
        for thread in ("thread-a", "thread-b"):
            (kept,) = checkpoint_reads.checkpoints(store, thread, None)
            assert kept.data["checkpoint_id"] == "cp2"
            # Every part of the split blob went with it.
            assert len(store.read_rows("checkpoint_blob", thread, f"{thread}|")) == 1
            assert len(store.read_rows("checkpoint_write", thread, f"{thread}|")) == 1


def _saver(config: Mapping[str, str], broker: str) -> Any:
    from agentstore_langgraph import AgentStoreSaver

    settings: dict[str, Any] = dict.fromkeys(("postgres_connection_string", "cosmos_endpoint"))
    settings.update({k.lower(): v for k, v in config.items()}, celery_broker_url=broker)
    return AgentStoreSaver(load_settings(_env_file=None, **settings))


def test_migrate_carries_checkpoints_to_cosmos_and_back_savers_read_the_same(
    run: Cli,
    pg_url: str,
    cosmos: Cosmos,
    broker: str,
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    pytest.importorskip("langgraph.channels.delta")
    from tests.langgraph.pruning_graph import CONFIG, build, scenario

    pg = {"POSTGRES_CONNECTION_STRING": pg_url}
    start_worker(broker, pg_url)
    with _saver(pg, broker) as saver:
        scenario(build(saver), lambda: None)  # checkpoints, blobs, writes, delta channels
        tuples, state = list(saver.list(CONFIG)), build(saver).get_state(CONFIG)
    assert tuples and any(t.pending_writes for t in tuples)
    with open_store(pg) as source:
        source.apply(_thread_ops("thread-a"))  # and a value split across rows
        expected = snapshot(source)

    def same_checkpoints(config: Mapping[str, str]) -> None:
        with open_store(config) as copy:
            assert snapshot(copy) == expected
        with _saver(config, broker) as copied:
            assert list(copied.list(CONFIG)) == tuples
            assert copied.get_tuple(CONFIG) == tuples[0]
            assert build(copied).get_state(CONFIG) == state  # DeltaChannels rebuilt there too

    def migrated(config: Mapping[str, str], to: dict[str, str], name: str) -> None:
        result = run(["migrate", "--to-env", str(env_file(tmp_path / name, to))], config)
        assert result.exit_code == 0, result.stderr
        for kind in KINDS:
            n = len(expected[kind])
            assert f"{kind:<12} source {n:>10,}  target {n:>10,}  OK" in result.stdout, kind
        same_checkpoints(to)

    assert min(len(expected[k]) for k in ("checkpoint", "checkpoint_blob", "checkpoint_write")) > 20
    cosmos_config = cosmos.config()
    migrated(pg, cosmos_config, "cosmos.env")
    with fresh_pg_database("agentstore_cli") as back_url:
        migrated(cosmos_config, {"POSTGRES_CONNECTION_STRING": back_url}, "pg.env")
