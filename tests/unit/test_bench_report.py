"""The benchmark's report: its table format, its JSON file, and its exit status on a miss."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import report, run
from bench.report import Figure, Results
from bench.scenarios import cost


def test_table_rows_keep_the_format_docs_performance_shows() -> None:
    figure = Figure(
        "get_state p50", 87.3, "µs", 101.0, "raw psycopg2 select", 0.864, "<= 1.3x", True
    )
    assert report.table([figure]).splitlines()[2] == (
        "| get_state p50 | 87.3 µs | 101.0 µs (raw psycopg2 select) | 0.86 | <= 1.3x | yes |"
    )


def _main(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, results: Results) -> None:
    monkeypatch.setattr(run, "measure", lambda *_: results)
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["bench.run", "--quick", "--only", "reads"])
    run.main()


def test_a_run_that_meets_its_targets_writes_its_json_and_exits_normally(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    met = Figure("buffered save_state p50", 5.0, "µs", target="<= 20 µs", met=True)
    _main(monkeypatch, tmp_path, Results([met], {"reads": {"x": 1.0}}))
    (written,) = tmp_path.glob("*.json")
    document = json.loads(written.read_text())
    assert list(document) == ["command", "mode", "sizes", "machine", "seconds", "figures", "raw"]
    assert document["command"] == "python -m bench.run --quick --only reads"
    assert document["figures"][0]["met"] is True


def test_a_missed_target_makes_the_run_exit_non_zero_and_say_which(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missed = Figure("get_state p50", 200.0, "µs", 100.0, "raw", 2.0, "<= 1.3x", False)
    with pytest.raises(SystemExit) as exit_:
        _main(monkeypatch, tmp_path, Results([missed]))
    assert exit_.value.code == 1
    assert "missed 1 target(s): get_state p50 (<= 1.3x)" in capsys.readouterr().out


def test_only_refuses_a_scenario_it_does_not_have(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["bench.run", "--only", "reads,bogus"])
    with pytest.raises(SystemExit) as exit_:
        run.main()
    assert exit_.value.code == 2
    assert "no scenario bogus" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("on", "off", "rate", "ratio", "met"),
    [
        (100.0, 104.0, False, 100 / 104, True),  # a latency, a bit lower with it on
        (106.0, 100.0, False, 1.06, False),  # a latency 6 % higher
        (9_600.0, 10_000.0, True, 10_000 / 9_600, True),  # a rate 4 % lower
        (9_400.0, 10_000.0, True, 10_000 / 9_400, False),  # a rate 6 % lower
    ],
)
def test_a_slowdown_is_met_up_to_five_percent_either_way_it_is_measured(
    on: float, off: float, rate: bool, ratio: float, met: bool
) -> None:
    figure = cost.paired("x", [off], [on], "u", "off", rate=rate)
    assert figure.ratio == pytest.approx(ratio)
    assert figure.met is met
    assert figure.extra == {"off": [off], "on": [on], "ratios": [pytest.approx(ratio)]}


def test_a_cost_is_the_median_of_its_paired_rounds_and_wall_time_is_not_gated() -> None:
    # Round 2 ran while the neighbours loaded the machine: both sides slowed, its ratio held.
    figure = cost.paired("x", [10.0, 30.0, 10.0], [10.2, 30.0, 11.0], "µs", "off")
    assert figure.ratio == pytest.approx(1.02)
    assert figure.met is True
    assert figure.value == 11.0 and figure.baseline == 10.0
    assert "ratios 1.00-1.10" in figure.baseline_name
    shown = cost.paired("x", [10.0], [20.0], "µs", "off", shown=cost.WALL)
    assert shown.met is None and shown.ratio == 2.0


def test_alternated_blocks_take_turns_at_running_first() -> None:
    order: list[bool] = []
    found = cost.alternate(lambda on, i: order.append(on) if i == 0 else None, 4 * cost.BLOCK)
    timed = order[2:]  # after one warm-up block of each
    assert timed == [False, True, True, False, False, True, True, False]
    assert len(found.cpu_us[False]) == len(found.p50_us[True]) == 4


def test_the_summary_prints_cpu_per_save_and_per_superstep(tmp_path: Path) -> None:
    figures = [
        Figure(
            "drain", 1.0, "saves/s", extra={"cpu_us_per_save": {"producer": 2.0, "workers": 3.0}}
        ),
        Figure(
            "supersteps",
            1.0,
            "/s",
            2.0,
            "theirs",
            extra={
                "cpu_us_per_step": {"client": 10.0, "workers": 5.5},
                "baseline_cpu_us_per_step": {"client": 20.0, "servers": 4.0},
            },
        ),
    ]
    machine = {"nproc": 2, "cpu": "x", "load_avg_at_start": (1, 1, 1), "load_avg_at_end": (1, 1, 1)}
    done = report.Run("python -m bench.run", "quick", {}, machine, 1.0, Results(figures))
    text = report.summary(done, tmp_path / "run.json", plotted=False)
    assert "CPU per save (µs), drain: producer 2.0, workers 3.0; total 5.0" in text
    assert "CPU per superstep (µs), supersteps: client 10.0, workers 5.5; total 15.5" in text
    assert (
        "CPU per superstep (µs), supersteps, theirs: client 20.0, servers 4.0; total 24.0" in text
    )
