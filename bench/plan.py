"""How hard each figure is driven (``Plan``), and the helpers the figures share: running the
load generator, progress lines, ratios and summaries."""

import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from bench.system import REPO


@dataclass(frozen=True)
class Plan:
    """How long and how hard each figure is driven."""

    warmup_s: float = 1.0
    submit_s: float = 8.0
    direct_s: float = 5.0
    e2e_s: float = 8.0
    e2e_latencies_ms: tuple[float, ...] = (0.0, 50.0, 1000.0)
    e2e_connections: int = 32
    slow_rate: float = 5.0
    slow_s: float = 20.0
    fast_rate: float = 200.0
    fast_s: float = 10.0
    added_latency_ms: float = 50.0
    #: Runs queued before the lone pool starts (None: twice its ``max_in_flight``).
    backlog: int | None = None
    drain_timeout_s: float = 300.0
    #: Stop waiting for runs when none has finished for this long (plus the provider latency).
    stall_s: float = 15.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Plan()
QUICK = Plan(
    warmup_s=0.2,
    submit_s=1.0,
    direct_s=0.6,
    e2e_s=1.0,
    e2e_latencies_ms=(0.0, 50.0, 1000.0),
    slow_s=1.0,
    fast_rate=50.0,
    fast_s=1.0,
    backlog=40,
    drain_timeout_s=60.0,
    stall_s=10.0,
)


_T0 = time.monotonic()


def progress(message: str) -> None:
    """One line on stderr per step of a run that takes minutes."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def load(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the load generator in its own process; its result."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.load"],
        input=orjson.dumps(spec),
        capture_output=True,
        cwd=REPO,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed: {done.stderr.decode()[-2000:]}")
    figures: dict[str, Any] = orjson.loads(done.stdout)
    return figures


def shifted(figures: dict[str, float], by: float) -> dict[str, float]:
    """A latency summary with ``by`` added to each figure (percentiles shift with it)."""
    return {k: (v if k == "n" else round(v + by, 3)) for k, v in figures.items()}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)


def cpu_ms_per_run(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, Any]:
    """CPU milliseconds each process kind spent per run between two ``BenchSystem.cpu()``."""
    if not count:
        return {}
    return {kind: round((after[kind] - before[kind]) * 1000 / count, 3) for kind in before}


def errors(result: dict[str, Any]) -> int:
    statuses: dict[str, int] = result["statuses"]
    failures: dict[str, int] = result["failures"]
    bad = sum(n for status, n in statuses.items() if not status.startswith("2"))
    return bad + sum(failures.values())
