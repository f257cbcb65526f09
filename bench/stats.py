"""Summaries of samples: percentiles by nearest rank."""

import math
from collections.abc import Sequence


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (NaN when there are none)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, mean, p50, p90, p99 and max, rounded to microseconds when the values are ms."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    figures = {
        "mean": sum(ordered) / len(ordered),
        "p50": percentile(ordered, 0.50),
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1],
    }
    return {"n": len(ordered)} | {name: round(value, 3) for name, value in figures.items()}
