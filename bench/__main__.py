"""``python -m bench [--quick] [--out var/bench]``: measure the dispatcher against a direct call.

Starts embedded Redis, the fake provider, the API and worker pools under ``<out>/work``
(a fresh SQLite store each time), drives every figure, prints a table, and writes
``<out>/<timestamp>.json`` and ``<out>/latest.json``. ``--quick`` is the smoke run: the same
figures from a tiny load in a few seconds, meaningless as speed.
"""

import argparse
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import report
from bench.machine import cpu_ticks, describe, describe_during, during, machine
from bench.phases import PHASES, Bench
from bench.plan import FULL, QUICK, progress
from bench.system import BenchSystem, Tuning, logged_errors, raise_open_files_limit
from bench.target import choose


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the smoke run: tiny load, seconds")
    parser.add_argument(
        "--only",
        type=_phases,
        default=PHASES,
        help=f"comma-separated figures to drive, of {', '.join(sorted(PHASES))} (memory: always;"
        " a partial run does not replace latest.json)",
    )
    parser.add_argument("--out", type=Path, default=Path("var/bench"), help="where JSON goes")
    parser.add_argument(
        "--provider",
        choices=["auto", "openai", "simulated"],
        default="auto",
        help="openai: through the fake over HTTP (auto picks it when this checkout has it)",
    )
    tuning = Tuning()
    parser.add_argument("--workers", type=int, default=tuning.workers)
    parser.add_argument("--worker-threads", type=int, default=tuning.worker_threads)
    parser.add_argument("--max-in-flight", type=int, default=tuning.max_in_flight)
    parser.add_argument("--worker-poll-ms", type=int, default=tuning.worker_poll_ms)
    parser.add_argument("--store-threads", type=int, default=tuning.store_threads)
    parser.add_argument("--log-level", default=tuning.log_level)
    return parser.parse_args(argv)


def _phases(text: str) -> frozenset[str]:
    chosen = frozenset(part.strip() for part in text.split(",") if part.strip())
    if not chosen or chosen - PHASES:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(sorted(PHASES))}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tuning = Tuning(
        workers=args.workers,
        worker_threads=args.worker_threads,
        max_in_flight=args.max_in_flight,
        worker_poll_ms=args.worker_poll_ms,
        store_threads=args.store_threads,
        log_level=args.log_level,
    )
    plan = QUICK if args.quick else FULL
    target = choose(args.provider)
    workdir = args.out / "work"
    shutil.rmtree(workdir, ignore_errors=True)
    open_files = raise_open_files_limit()
    started, began = datetime.now(UTC), time.monotonic()
    ticks = cpu_ticks()
    before = machine()
    mode = "quick smoke run" if args.quick else "full run (a few minutes)"
    print(f"bench: {mode}, runs of {target.app} via the {target.pool} pool", flush=True)
    print(describe(before), flush=True)
    system = BenchSystem(workdir, target, tuning)
    try:
        progress("starting Redis, the fake provider and the API")
        system.start()
        figures = Bench(system, plan).run(args.only)
    finally:
        system.stop()
    fast = f"{plan.fast_rate:g}rps"
    document = {
        "started_at": started.isoformat(),
        "duration_s": round(time.monotonic() - began, 1),
        "quick": args.quick,
        "only": sorted(args.only),
        "target": {"name": target.name, "app": target.app, "pool": target.pool},
        "tuning": tuning.as_dict() | {"open_files_limit": open_files},
        "plan": plan.as_dict(),
        "machine": before | during(ticks),
        "figures": figures,
        "logged_errors": logged_errors(workdir),
        "early_exits": system.early_exits,
        "targets": [goal.check(figures) for goal in report.goals(fast)],
    }
    whole = args.only == PHASES
    stamp = started.strftime("%Y%m%dT%H%M%SZ") + ("" if whole else "-partial")
    path = report.write(document, args.out, stamp, latest=whole)
    print(report.table(document))
    print(describe_during(document["machine"]))
    print(f"\nwrote {path}" + (f" and {args.out / 'latest.json'}" if whole else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
