"""The hybrid logical clock: strictly increasing, whatever the wall clock does, and per process."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from storage import versions
from storage.versions import VERSION_RE, HybridLogicalClock, new_version
from tests.forking import HOWS, Child, How


class WallClock:
    """A wall clock the test sets, in milliseconds."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def time_ns(self) -> int:
        return self.ms * 1_000_000


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> Iterator[WallClock]:
    clock = WallClock(1_700_000_000_000)
    monkeypatch.setattr(time, "time_ns", clock.time_ns)  # the module storage.versions reads
    yield clock


def _parts(version: str) -> tuple[int, int, str]:
    ms, counter, node = version.split(".")
    assert len(ms) == 15 and len(counter) == 6 and VERSION_RE.match(version), version
    return int(ms), int(counter), node


def test_versions_increase_while_the_wall_clock_steps_backwards(wall: WallClock) -> None:
    clock = HybridLogicalClock("n0000000")
    issued = [clock.now(), clock.now()]
    wall.ms -= 60_000  # an NTP step back by a minute
    issued += [clock.now() for _ in range(3)]
    wall.ms += 30_000  # still behind what was issued
    issued.append(clock.now())
    wall.ms += 30_001  # past it again: back on wall time
    issued.append(clock.now())
    assert issued == sorted(set(issued)), "strictly increasing"
    assert _parts(issued[-2])[0] == _parts(issued[0])[0], "held at the newest time seen"
    assert _parts(issued[-1]) == (wall.ms, 0, "n0000000")


def test_a_counter_overflow_moves_to_the_next_millisecond(wall: WallClock) -> None:
    clock = HybridLogicalClock("n0000000")
    first = clock.now()
    clock._counter = versions._COUNTER_LIMIT - 3  # as if a million versions in one ms
    issued = [first, *(clock.now() for _ in range(5))]
    assert issued == sorted(set(issued)), "strictly increasing"
    parts = [_parts(v) for v in issued]
    assert parts[2][:2] == (wall.ms, versions._COUNTER_LIMIT - 1), "the last counter of a ms"
    assert parts[3][:2] == (wall.ms + 1, 0), "then the next ms, counter 0"
    wall.ms += 1  # the wall clock reaching the borrowed ms does not repeat it
    assert clock.now() > issued[-1]


@pytest.mark.parametrize("how", HOWS)
def test_a_forked_child_never_issues_its_parents_versions(wall: WallClock, how: How) -> None:
    new_version()
    # Both sides then issue at the same frozen wall time from the same clock state.
    child = Child(lambda: [new_version() for _ in range(3)], how)
    parents = [new_version() for _ in range(3)]
    childs = child.result()
    assert not set(parents) & set(childs)
    assert {_parts(v)[2] for v in parents}.isdisjoint(_parts(v)[2] for v in childs)


def test_a_fork_while_another_thread_holds_the_clock_does_not_hang_the_child() -> None:
    lock = versions._clock._lock
    with lock:  # as if another thread was issuing a version at the moment of fork
        child = Child(new_version, "os.fork")
    assert VERSION_RE.match(child.result(timeout=20))
