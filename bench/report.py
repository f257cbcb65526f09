"""The benchmark's output: a JSON document under ``var/bench/`` and a table on stdout.

The JSON holds every figure with its ``how``, its ``direct`` baseline and ``ratio`` to it, the
settings the system ran under, the machine, and each issue target with whether it was met.
"""

import json
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Figures = dict[str, Any]


@dataclass(frozen=True)
class Goal:
    name: str
    limit: float
    at_least: bool
    read: Callable[[Figures], float | None]

    def check(self, figures: Figures) -> dict[str, Any]:
        try:
            value = self.read(figures)
        except (KeyError, TypeError, ValueError):
            value = None
        met = None
        if value is not None and not math.isnan(value):
            met = value >= self.limit if self.at_least else value <= self.limit
        sign = ">=" if self.at_least else "<="
        return {"target": f"{self.name} {sign} {self.limit:g}", "measured": value, "met": met}


def goals(fast_rate: str) -> list[Goal]:
    """The issue's targets for a 2-core machine."""

    def workers(f: Figures) -> float:
        memory = f["memory"]
        sizes: list[float | None] = [*memory["worker_mib"].values(), memory["in_flight_worker_mib"]]
        return max(size for size in sizes if size is not None)

    return [
        Goal("submission runs/s at 32 connections", 3000, True,
             lambda f: f["submission"]["c32"]["runs_per_s"]),
        Goal("submission p99 ms at 32 connections", 30, False,
             lambda f: f["submission"]["c32"]["latency_ms"]["p99"]),
        Goal("end-to-end runs/s, 50 ms provider", 1000, True,
             lambda f: f["end_to_end"]["50ms"]["runs_per_s"]),
        Goal("provider calls in flight, 1 worker process", 1000, True,
             lambda f: f["in_flight"]["peak_calls_in_flight"]),
        Goal(f"added latency p50 ms at {fast_rate}", 3, False,
             lambda f: f["added_latency"][fast_rate]["added_ms"]["p50"]),
        Goal(f"added latency p99 ms at {fast_rate}", 10, False,
             lambda f: f["added_latency"][fast_rate]["added_ms"]["p99"]),
        Goal("API peak RSS MiB", 100, False, lambda f: f["memory"]["api_mib"]),
        Goal("worker peak RSS MiB (largest)", 150, False, workers),
    ]  # fmt: skip


def write(document: dict[str, Any], out_dir: Path, stamp: str, *, latest: bool = True) -> Path:
    """``<out_dir>/<stamp>.json`` and (if ``latest``) ``latest.json``; the first one's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=2, sort_keys=False) + "\n"
    path = out_dir / f"{stamp}.json"
    path.write_text(text)
    if latest:
        (out_dir / "latest.json").write_text(text)
    return path


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _pair(latency: dict[str, Any]) -> str:
    return f"{_num(latency.get('p50'))} / {_num(latency.get('p99'))}"


Row = tuple[str, str, str, str]


def rows(figures: Figures) -> list[Row]:
    """(figure, measured, direct, ratio) for the table."""
    sections: list[tuple[str, Callable[[Figures], list[Row]]]] = [
        ("submission", _submission_rows),
        ("end_to_end", _end_to_end_rows),
        ("in_flight", _in_flight_rows),
        ("added_latency", _added_rows),
        ("memory", _memory_rows),
    ]
    return [row for name, build in sections if name in figures for row in build(figures[name])]


def _submission_rows(figures: Figures) -> list[Row]:
    out: list[Row] = []
    for key, fig in figures.items():
        conn, direct, ratio = f"{key[1:]} conn", fig["direct"], fig["ratio"]
        runs = _nums(fig["runs_per_s"], direct["requests_per_s"], ratio["runs_per_s"])
        latency = (_pair(fig["latency_ms"]), _pair(direct["latency_ms"]), _num(ratio["p99"]))
        out += [
            (f"submit runs/s, {conn}", *runs),
            (f"submit p50 / p99 ms, {conn}", *latency),
            (f"  API CPU ms per run, {conn}", _num(fig["cpu_ms_per_run"]), "-", "-"),
        ]
    return out


def _end_to_end_rows(figures: Figures) -> list[Row]:
    out: list[Row] = []
    for key, fig in figures.items():
        direct, cpu = fig["direct"], fig["cpu_ms_per_run"]
        runs = _nums(fig["runs_per_s"], direct["requests_per_s"], fig["ratio"]["runs_per_s"])
        held = _nums(fig["peak_calls_in_flight"], direct["connections"], None)
        cost = f"{_num(cpu.get('api'))} + {_num(cpu.get('workers'))}"
        out += [
            (f"end-to-end runs/s, provider {key}", *runs),
            (f"  calls at the fake at once, {key}", *held),
            (f"  CPU ms per run, API + workers, {key}", cost, "-", "-"),
        ]
        if fig["failed"] or fig["unfinished"]:
            lost = f"{fig['failed']} / {fig['unfinished']} of {fig['runs']}"
            out.append((f"  runs failed / unfinished, {key}", lost, "-", "-"))
    return out


def _in_flight_rows(fig: Figures) -> list[Row]:
    direct, ratio = fig["direct"], fig["ratio"]["peak_calls_in_flight"]
    return [
        (
            "calls in flight, 1 worker, 1 s provider",
            *_nums(fig["peak_calls_in_flight"], direct["peak_calls_in_flight"], ratio),
        ),
        ("  claims/s of that worker", *_nums(fig["claims_per_s"], None, None)),
        ("  runs failed (of all queued)", f"{fig['failed']} of {fig['runs']}", "-", "-"),
    ]


def _added_rows(figures: Figures) -> list[Row]:
    out: list[Row] = []
    for key, fig in figures.items():
        direct = _pair(fig["direct"]["added_ms"])
        out.append(
            (f"added p50 / p99 ms at {key}", _pair(fig["added_ms"]), direct,
             _num(fig["ratio"]["total_p99"]))
        )  # fmt: skip
        out.append((f"  client send -> finished_at in the store, {key}",
                    _pair(fig["store_added_ms"]), "-", "-"))  # fmt: skip
        out.append((f"  client send -> terminal event published, {key}",
                    _pair(fig["event_added_ms"]), "-", "-"))  # fmt: skip
    return out


def _memory_rows(memory: Figures) -> list[Row]:
    """Peak RSS of each process, with its RSS when it had just started in brackets."""
    ready = memory.get("ready_mib", {})
    sizes = {"api": memory["api_mib"]} | memory["worker_mib"]
    rows = [(name, size, ready.get(name)) for name, size in sizes.items()]
    if memory["in_flight_worker_mib"] is not None:
        rows.append(("in-flight worker", memory["in_flight_worker_mib"], None))
    return [
        (f"peak RSS MiB (at start): {name}", f"{_num(size)} ({_num(start)})", "-", "-")
        for name, size, start in rows
    ]


def _nums(*values: Any) -> tuple[str, str, str]:
    measured, direct, ratio = (_num(value) for value in values)
    return measured, direct, ratio


def table(document: dict[str, Any]) -> str:
    header = ("figure", "measured", "direct", "ratio")
    body = rows(document["figures"])
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                  enumerate(zip(row, widths, strict=True)))
        for row in [header, *body]
    ]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    lines += ["", "targets (2-core machine):"]
    for goal in document["targets"]:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[goal["met"]]
        lines.append(f"  {verdict:6}  {goal['target']}  (measured {_num(goal['measured'])})")
    for process, code in document.get("early_exits", {}).items():
        lines.append(f"  {process} EXITED on its own with code {code}")
    for process, counts in document.get("logged_errors", {}).items():
        for text, count in counts.items():
            lines.append(f"  {process} logged {count} error(s): {text[:110]}")
    lines += ["", "how each figure was measured:"]
    for name, figure in _hows(document["figures"]):
        lines += textwrap.wrap(f"{name}: {figure}", 100, subsequent_indent="    ")
    return "\n".join(lines)


def _hows(figures: Figures) -> list[tuple[str, str]]:
    found = []
    for name, figure in figures.items():
        if "how" in figure:
            found.append((name, figure["how"]))
        else:
            found += [(f"{name} {key}", sub["how"]) for key, sub in figure.items()]
    return found
