"""The benchmark harness still runs: ``python -m bench --quick`` on a tiny load.

No speed is asserted here (timings on a shared machine prove nothing); what is pinned is that
every figure is produced, says how it was measured, carries its direct baseline, and that the
runs it drove really went through the system and succeeded.
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import parse_args
from bench.machine import cpu_model, cpu_ticks
from bench.phases import PHASES

REPO = Path(__file__).resolve().parents[2]
BASELINED = ["submission", "end_to_end", "added_latency", "in_flight"]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "targets (2-core machine)" in done.stdout
    written = [p for p in out.glob("*.json") if p.name != "latest.json"]
    assert len(written) == 1
    assert written[0].read_text() == (out / "latest.json").read_text()
    result: dict[str, Any] = json.loads(written[0].read_text())
    return result


def leaves(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each figure by name (``submission c32``, ``in_flight``, ...)."""
    found = {}
    for name, figure in figures.items():
        if "how" in figure:
            found[name] = figure
        else:
            found.update({f"{name} {key}": sub for key, sub in figure.items()})
    return found


def test_every_figure_is_there_and_says_how_it_was_measured(document: dict[str, Any]) -> None:
    figures = leaves(document["figures"])
    expected = {
        "submission c32",
        "submission c128",
        "end_to_end 0ms",
        "end_to_end 50ms",
        "end_to_end 1000ms",
        "added_latency 5rps",
        f"added_latency {document['plan']['fast_rate']:g}rps",
        "in_flight",
        "memory",
    }
    assert set(figures) == expected
    assert all(len(figure["how"]) > 40 for figure in figures.values())


def test_every_speed_figure_has_its_direct_baseline_and_ratio(document: dict[str, Any]) -> None:
    for name, figure in leaves(document["figures"]).items():
        if name.split()[0] in BASELINED:
            assert figure["direct"], name
            assert figure["ratio"], name


def test_the_runs_it_drove_all_succeeded(document: dict[str, Any]) -> None:
    figures, seen = document["figures"], (document["logged_errors"], document["early_exits"])
    assert document["early_exits"] == {}
    for name, figure in figures["end_to_end"].items():
        assert figure["runs"] > 0, name
        assert (figure["succeeded"], figure["unfinished"]) == (figure["runs"], 0), (name, seen)
    for name, figure in figures["submission"].items():
        assert figure["errors"] == 0, (name, seen)
    for name, figure in figures["added_latency"].items():
        assert figure["errors"] == 0, (name, seen)
        assert figure["added_ms"]["n"] > 0, (name, seen)
        assert figure["answered_not_over"] == 0, (name, seen)  # every waiting client got its run
    in_flight = figures["in_flight"]
    backlog = document["plan"]["backlog"]
    assert (in_flight["runs"], in_flight["succeeded"]) == (backlog, backlog), seen
    assert in_flight["peak_calls_in_flight"] >= 1


def test_it_records_settings_memory_and_every_target(document: dict[str, Any]) -> None:
    assert {"workers", "worker_threads", "max_in_flight", "worker_poll_ms"} <= set(
        document["tuning"]
    )
    memory = document["figures"]["memory"]
    assert memory["api_mib"] > 0, memory
    assert all(size and size > 0 for size in memory["worker_mib"].values()), memory
    assert len(document["targets"]) == 8
    assert [goal for goal in document["targets"] if goal["measured"] is None] == []


def test_it_records_how_fast_the_machine_is_at_python_and_between_processes(
    document: dict[str, Any], tmp_path: Path
) -> None:
    """Runs on different machines differ by what crossing processes costs as much as by
    Python's speed: both are measured and kept with the figures."""
    found = document["machine"]
    assert found["cpus"] >= 1 and "cpu_model" in found
    assert 0 < found["python_loop_us"] < 10_000
    assert 0 < found["loopback_round_trip_us"] < 100_000
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU @ 2.0GHz\nflags\t: fpu\n")
    assert cpu_model(cpuinfo) == "Some CPU @ 2.0GHz"
    assert cpu_model(tmp_path / "absent") is None


def test_it_records_what_the_machine_did_during_the_run(
    document: dict[str, Any], tmp_path: Path
) -> None:
    """A virtual machine's neighbours change its speed mid-run: the share of CPU time stolen
    over the run and the round trip at its end are kept with the figures."""
    found = document["machine"]
    assert 0 < found["loopback_round_trip_us_after"] < 100_000
    assert found["stolen_share"] is None or 0 <= found["stolen_share"] < 1
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 50 800 10 0 3 40 0 0\ncpu0 50 2 25 400 5 0 1 20 0 0\n")
    assert cpu_ticks(stat) == (40, 1008)
    stat.write_text("intr 1 2 3\n")
    assert cpu_ticks(stat) is None


def test_only_names_the_figures_to_drive() -> None:
    assert parse_args([]).only == PHASES
    assert parse_args(["--only", "submission, in_flight"]).only == {"submission", "in_flight"}
    with pytest.raises(SystemExit):
        parse_args(["--only", "submission,speed"])
