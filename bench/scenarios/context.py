"""What a scenario gets: the run's sizes and services, and the results it reports into."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from ..report import Results
from .drain import Drain
from .workload import Sizes


@dataclass
class Context:
    sizes: Sizes
    admin: str  # a PostgreSQL URL allowed to create and drop databases
    broker: str  # the run's own redis-server
    results: Results
    # The naive drain is the baseline of several scenarios: measured once, by the first.
    naive: Drain | None = None

    def step(self, name: str) -> None:
        """Say on stderr what is being measured now."""
        print(f"-- {name}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Scenario:
    run: Callable[[Context], None]
    help: str
