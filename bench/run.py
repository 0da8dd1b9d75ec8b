"""agentstore's throughput and latency, each figure next to a raw baseline from the same run.

    .venv/bin/python -m bench.run           # make bench: full sizes (100k saves)
    .venv/bin/python -m bench.run --quick   # make bench-quick: small sizes, under 2 minutes

Starts its own redis-server on a free port, fresh PostgreSQL databases (on --pg) and the
Cosmos DB test server, runs workers as subprocesses, and stops all of it. Prints a table and
writes bench/results/<timestamp>.json and a PNG plot of throughput vs batch size. Exits with
status 1 when any figure misses its target.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict

from .report import Results, Run, machine, summary, write
from .scenarios import SCENARIOS, Context
from .scenarios.workload import FULL, QUICK, Sizes
from .services import PG_ADMIN, redis_server


def measure(sizes: Sizes, admin: str, only: set[str] | None) -> Results:
    """Run the chosen scenarios (all if `only` is None) in the registry's order."""
    results = Results()
    with redis_server() as broker:
        ctx = Context(sizes, admin, broker, results)
        for name, scenario in SCENARIOS.items():
            if only is None or name in only:
                scenario.run(ctx)
    return results


def scenario_names(text: str) -> set[str]:
    names = set(text.split(","))
    unknown = sorted(names - SCENARIOS.keys())
    if unknown:
        raise argparse.ArgumentTypeError(f"no scenario {', '.join(unknown)}")
    return names


def main() -> None:
    width = max(map(len, SCENARIOS))
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scenarios, in the order a run measures them:\n"
        + "\n".join(f"  {name:{width}}  {s.help}" for name, s in SCENARIOS.items()),
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, under 2 minutes")
    parser.add_argument(
        "--pg",
        default=PG_ADMIN,
        help="a PostgreSQL URL allowed to create and drop databases",
    )
    parser.add_argument(
        "--only",
        type=scenario_names,
        metavar="NAME[,NAME...]",
        help=f"comma-separated, of: {','.join(SCENARIOS)}",
    )
    opts = parser.parse_args()
    sizes = QUICK if opts.quick else FULL
    started = time.monotonic()
    info = machine()
    results = measure(sizes, opts.pg, opts.only)
    info["load_avg_at_end"] = os.getloadavg()
    run = Run(
        command=" ".join(["python", "-m", "bench.run", *sys.argv[1:]]),
        mode="quick" if opts.quick else "full",
        sizes=asdict(sizes),
        machine=info,
        seconds=time.monotonic() - started,
        results=results,
    )
    out, plotted = write(run)
    print(summary(run, out, plotted))
    if results.missed():
        sys.exit(1)


if __name__ == "__main__":
    main()
