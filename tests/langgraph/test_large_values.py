"""Channel values up to 16 MB go through the queue and back; larger ones fail at the call."""

from __future__ import annotations

import os

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import empty_checkpoint

from storage.errors import ValidationError
from tests.langgraph.conftest import Stack


def test_15_mb_of_channel_values_round_trip_and_17_mb_publish_nothing(stack: Stack) -> None:
    saver = stack.saver(read_timeout=120)
    config: RunnableConfig = {"configurable": {"thread_id": "big", "checkpoint_ns": ""}}
    big = os.urandom(15_000_000)
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"blob": big}
    checkpoint["channel_versions"] = {"blob": saver.get_next_version(None, None)}
    saved = saver.put(config, checkpoint, {"step": 0}, checkpoint["channel_versions"])
    tup = saver.get_tuple(saved)
    assert tup is not None and tup.checkpoint["channel_values"] == {"blob": big}

    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"blob": os.urandom(17_000_000)}
    checkpoint["channel_versions"] = {"blob": saver.get_next_version(None, None)}
    with pytest.raises(ValidationError, match="limit is 16,000,000 bytes"):
        saver.put(config, checkpoint, {"step": 1}, checkpoint["channel_versions"])
    latest = saver.get_tuple(config)
    assert latest is not None and latest.checkpoint["id"] == tup.checkpoint["id"]
