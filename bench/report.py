"""What a benchmark run found and how it is shown: the table, the JSON file, the plot."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None  # ours relative to the baseline, in the target's direction
    target: str = ""
    met: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# At most this much slower with a feature on than off, in the same run (metrics, tracing).
MAX_SLOWDOWN = 1.05


@dataclass
class Results:
    """The figures of the table, in order, and every raw number behind them."""

    figures: list[Figure] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def missed(self) -> list[Figure]:
        return [f for f in self.figures if f.met is False]


@dataclass
class Run:
    """One run: how it was started, on what machine, how long it took, what it found."""

    command: str
    mode: str
    sizes: dict[str, int]
    machine: dict[str, Any]
    seconds: float
    results: Results

    def document(self) -> dict[str, Any]:
        """The JSON written to bench/results/ (docs/PERFORMANCE.md describes its fields)."""
        return {
            "command": self.command,
            "mode": self.mode,
            "sizes": self.sizes,
            "machine": self.machine,
            "seconds": self.seconds,
            "figures": [dataclasses.asdict(f) for f in self.results.figures],
            "raw": self.results.raw,
        }


def machine() -> dict[str, Any]:
    """The machine a run measures on; `load_avg_at_end` is added when it ends."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "load_avg_at_start": os.getloadavg(),
    }


def write(run: Run) -> tuple[Path, bool]:
    """Write `<UTC timestamp>.json` in bench/results/, and its PNG plot if the run has a sweep;
    return the JSON's path and whether the plot was drawn."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{stamp}.json"
    out.write_text(json.dumps(run.document(), indent=2, default=str))
    sweep = run.results.raw.get("sweep")
    plotted = sweep is not None and plot(sweep, out.with_suffix(".png"))
    return out, plotted


def table(figures: list[Figure]) -> str:
    """The markdown table docs/PERFORMANCE.md shows."""
    lines = [
        "| figure | agentstore | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        base = f"{f.baseline:,.1f} {f.unit} ({f.baseline_name})" if f.baseline is not None else "-"
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else "-"
        met = {True: "yes", False: "**no**", None: "-"}[f.met]
        lines.append(
            f"| {f.name} | {f.value:,.1f} {f.unit} | {base} | {ratio} | {f.target or '-'} | {met} |"
        )
    return "\n".join(lines)


def summary(run: Run, out: Path, plotted: bool) -> str:
    """What a run prints: the table, CPU per save, the run's conditions, the files written,
    and the targets it missed."""
    parts = [table(run.results.figures)]
    for f in run.results.figures:
        for key, unit, of in (
            ("cpu_us_per_save", "save", f.name),
            ("cpu_us_per_step", "superstep", f.name),
            ("baseline_cpu_us_per_step", "superstep", f"{f.name}, {f.baseline_name}"),
        ):
            if key in f.extra:
                cpu = f.extra[key]
                each = ", ".join(f"{name} {us:.1f}" for name, us in cpu.items())
                total = sum(cpu.values())
                parts.append(f"\nCPU per {unit} (µs), {of}: {each}; total {total:.1f}")
    info = run.machine
    parts.append(
        f"\n{run.command}: {run.seconds:.0f} s on {info['nproc']} cores ({info['cpu']}); "
        f"load average {info['load_avg_at_start'][0]:.1f} -> {info['load_avg_at_end'][0]:.1f}"
    )
    parts.append(f"wrote {out}" + (f" and {out.with_suffix('.png')}" if plotted else ""))
    if "sweep" in run.results.raw and not plotted:
        parts.append("no plot: matplotlib is not installed (pip install matplotlib)")
    missed = run.results.missed()
    if missed:
        names = "; ".join(f"{f.name} ({f.target})" for f in missed)
        parts.append(f"\nmissed {len(missed)} target(s): {names}")
    return "\n".join(parts)


def plot(points: list[dict[str, float]], path: Path) -> bool:
    """Throughput vs batch size as a PNG; False if matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = [p["batch"] for p in points]
    ax.plot(
        sizes,
        [p["agentstore_per_s"] for p in points],
        "o-",
        label="agentstore drain (AGENTSTORE_BATCH_MAX)",
    )
    ax.plot(
        sizes,
        [p["raw_per_s"] for p in points],
        "s--",
        label="raw execute_values (rows per page and commit)",
    )
    ax.set_xscale("log")
    ax.set_xlabel("batch size (ops or rows per transaction)")
    ax.set_ylabel("saves (rows) per second")
    ax.set_title("Throughput vs batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
