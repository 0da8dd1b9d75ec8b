"""The CLI carries LangGraph checkpoints: export / import, and `erase --thread`."""

from __future__ import annotations

from pathlib import Path

from storage import checkpoint_reads
from storage.ops import Op, make_op
from tests.cli.conftest import Cli, open_store, snapshot
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
