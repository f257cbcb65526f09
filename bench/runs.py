"""What the store says about the benchmark's runs: their timestamps, read after each phase.

Timestamps are the store's own (UTC, microseconds): ``created_at`` is written by the API as it
stores the run, ``started_at`` when a worker claims it, ``finished_at`` when the worker records
its outcome. The harness compares them with its own wall clock (same host, same clock).
"""

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, func, select
from sqlmodel import Session, col

from dispatcher.models import Run

TERMINAL = ("succeeded", "failed", "canceled", "expired")


@dataclass(frozen=True)
class RunTimes:
    id: str
    status: str
    created: float  # epoch seconds
    started: float | None
    finished: float | None


def _epoch(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


def runs_since(engine: Engine, since: float) -> list[RunTimes]:
    """Every run created at or after ``since`` (epoch seconds)."""
    query = select(
        col(Run.id), col(Run.status), col(Run.created_at), col(Run.started_at), col(Run.finished_at)
    ).where(col(Run.created_at) >= datetime.fromtimestamp(since, UTC))
    with Session(engine) as session:
        rows = session.execute(query).all()
    return [
        RunTimes(row[0], row[1], row[2].timestamp(), _epoch(row[3]), _epoch(row[4])) for row in rows
    ]


def unfinished_since(engine: Engine, since: float) -> int:
    query = (
        select(func.count())
        .select_from(Run)
        .where(col(Run.created_at) >= datetime.fromtimestamp(since, UTC))
        .where(col(Run.status).not_in(TERMINAL))
    )
    with Session(engine) as session:
        return int(session.execute(query).scalar_one())


def wait_finished(engine: Engine, since: float, stall_s: float, timeout_s: float) -> int:
    """Wait until every run created since ``since`` is terminal; how many are still not.

    Gives up early when none has finished for ``stall_s``: a run whose message was lost stays
    queued until the sweeper's ``requeue_after_s`` (minutes), and is reported, not waited for.
    """
    deadline = time.monotonic() + timeout_s
    left, progressed = unfinished_since(engine, since), time.monotonic()
    while left and time.monotonic() < deadline and time.monotonic() - progressed < stall_s:
        time.sleep(0.2)
        now_left = unfinished_since(engine, since)
        if now_left < left:
            progressed = time.monotonic()
        left = now_left
    return left


def delete_queued(engine: Engine) -> int:
    """Drop runs no worker will ever take (the submission figure's, after their queue is gone)."""
    with Session(engine) as session:
        result = session.execute(delete(Run).where(col(Run.status) == "queued"))
        session.commit()
        return int(result.rowcount)  # type: ignore[attr-defined]


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (a sweep over their ends)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak
