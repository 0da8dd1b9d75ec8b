"""The version rule, on every backend: integers compare as numbers, the first save of a version
wins (inside a batch as across batches), a partition delete covers its own version."""

from __future__ import annotations

import numbers
from typing import Any

import numpy
import pytest

from storage import StorageClient, ValidationError
from storage.ops import Op, make_op
from storage.versions import MAX_INT_VERSION


def _state(uid: str, value: object, version: str | int) -> Op:
    return make_op(
        "save_state", {"agent_id": uid, "state_id": "s", "state": {"v": value}}, version=version
    )


def _txns(uid: str, txns: list[dict[str, Any]], version: int) -> Op:
    return make_op("save_transactions", {"case_id": uid, "transactions": txns}, version=version)


def test_integer_versions_compare_as_numbers(store: StorageClient, uid: str) -> None:
    store.save_state(uid, "s", {"v": 10}, version=10)
    store.save_state(uid, "s", {"v": 9}, version=9)
    store.save_state(uid, "s", {"v": "9 as text"}, version="9")
    assert store.get_state(uid, "s") == {"v": 10}
    store.save_state(uid, "s", {"v": 11}, version="0011")
    assert store.get_state(uid, "s") == {"v": 11}
    store.save_task(uid, "t", {"v": 100}, version=100)
    store.save_task(uid, "t", {"v": 99}, version=99)
    assert store.get_task(uid, "t") == {"v": 100}


def test_small_integer_versions_sort_below_automatic_ones(store: StorageClient, uid: str) -> None:
    # An integer sorts like the millisecond timestamp it equals: 1 is in 1970.
    store.save_state(uid, "s", {"v": "auto"})
    store.save_state(uid, "s", {"v": "one"}, version="1")
    assert store.get_state(uid, "s") == {"v": "auto"}
    store.save_state(uid, "s", {"v": "max"}, version=MAX_INT_VERSION)
    store.save_state(uid, "s", {"v": "auto again"})
    assert store.get_state(uid, "s") == {"v": "max"}


@pytest.mark.parametrize("version", ["v1", "9x", "-1", -1, MAX_INT_VERSION + 1, "1" * 16, True])
def test_ambiguous_versions_rejected(store: StorageClient, uid: str, version: Any) -> None:
    with pytest.raises(ValidationError, match="version must be an integer"):
        store.save_state(uid, "s", {"x": 1}, version=version)
    assert store.get_state(uid, "s") is None


class _Seven:
    """An integer type that is not an int, as numpy's are."""

    def __int__(self) -> int:
        return 7

    def __lt__(self, other: int) -> bool:
        return other > 7

    def __repr__(self) -> str:
        return "Seven"


numbers.Integral.register(_Seven)


@pytest.mark.parametrize("seven", [_Seven(), numpy.int64(7), numpy.uint8(7)], ids=repr)
def test_any_integral_is_a_version_and_a_limit(store: StorageClient, uid: str, seven: Any) -> None:
    store.save_state(uid, "s", {"v": 8}, version=8)
    store.save_state(uid, "s", {"v": 7}, version=seven)
    assert store.get_state(uid, "s") == {"v": 8}, "7 is older than 8, however it is typed"
    for i in range(9):
        store.save_conversation(uid, {"i": i})
    assert [m["i"] for m in store.get_conversation_history(uid, limit=seven)] == list(range(2, 9))


def test_huge_limit_means_all(store: StorageClient, uid: str) -> None:
    for i in range(3):
        store.save_conversation(uid, {"i": i})
    for limit in (2**63 - 1, 2**63, 10**30):
        assert [m["i"] for m in store.get_conversation_history(uid, limit=limit)] == [0, 1, 2]


# --- equal versions: the first save of a version wins, wherever it is -------------------------


def test_equal_versions_first_wins_across_batches(store: StorageClient, uid: str) -> None:
    store.apply([_state(uid, "first", 5)])
    store.apply([_state(uid, "second", 5)])
    assert store.get_state(uid, "s") == {"v": "first"}
    store.apply([_txns(uid, [{"id": "x", "v": "first"}], 5)])
    store.apply([_txns(uid, [{"id": "x", "v": "second"}], 5)])
    assert store.get_transactions(uid) == [{"id": "x", "v": "first"}]


def test_equal_versions_first_wins_inside_a_batch(store: StorageClient, uid: str) -> None:
    store.apply([_state(uid, "first", 5), _state(uid, "second", 5)])
    assert store.get_state(uid, "s") == {"v": "first"}
    store.apply([_txns(uid, [{"id": "x", "v": "first"}], 5), _txns(uid, [{"id": "x"}], 5)])
    assert store.get_transactions(uid) == [{"id": "x", "v": "first"}]


def test_a_partition_delete_covers_its_own_version(store: StorageClient, uid: str) -> None:
    erase = make_op("erase_agent", {"agent_id": uid}, version=5)
    store.apply([erase])
    store.apply([_state(uid, "after the erase, same version", 5)])
    assert store.get_state(uid, "s") is None, "a save at the erase's version stays erased"
    store.apply([_state(uid, "newer", 6)])
    assert store.get_state(uid, "s") == {"v": "newer"}

    other = f"{uid}b"
    store.apply([_state(other, "before the erase, same version", 5)])
    store.apply([make_op("erase_agent", {"agent_id": other}, version=5)])
    assert store.get_state(other, "s") is None, "an erase removes its own version too"

    third = f"{uid}c"
    store.apply(
        [_state(third, "same batch", 5), make_op("erase_agent", {"agent_id": third}, version=5)]
    )
    assert store.get_state(third, "s") is None, "inside a batch, the same answer"


def test_a_whole_history_delete_covers_its_own_version(store: StorageClient, uid: str) -> None:
    store.apply([_txns(uid, [{"id": "x"}], 5)])
    store.apply([make_op("delete_transactions", {"case_id": uid}, version=5)])
    assert store.get_transactions(uid) == []
    store.apply([_txns(uid, [{"id": "y"}], 5)])
    assert store.get_transactions(uid) == []
    msg = make_op("save_conversation", {"conversation_id": uid, "message": {}}, version=5)
    store.apply([make_op("delete_conversation", {"conversation_id": uid}, version=5), msg])
    assert store.get_conversation_history(uid) == []


# --- a transaction's place: the first position of its earliest version -----------------------


@pytest.mark.parametrize("reverse", [False, True], ids=["in order", "reversed"])
def test_resaved_transaction_keeps_its_first_position_in_one_batch(
    store: StorageClient, uid: str, reverse: bool
) -> None:
    ops = [
        _txns(uid, [{"id": "x", "v": 1}, {"id": "y", "v": 1}], 1),
        _txns(uid, [{"id": "x", "v": 2}], 2),
    ]
    store.apply(ops[::-1] if reverse else ops)
    assert store.get_transactions(uid) == [{"id": "x", "v": 2}, {"id": "y", "v": 1}]
