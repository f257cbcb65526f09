"""Creating and reading runs. State transitions live in ``dispatcher.store.lifecycle``.

New runs are written in bulk: ``new_run`` builds a row's values, ``insert_runs`` writes any
number of them with one prebuilt Core ``INSERT`` (no ORM unit of work), ``delete_runs`` takes
them back when their messages could not be enqueued.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, bindparam, delete, insert
from sqlmodel import Session, col, select

from dispatcher.db import utcnow
from dispatcher.ids import new_id
from dispatcher.models import Attempt, Run
from schemas.hops import Hop
from schemas.routing import DEFAULT_MAX_ATTEMPTS

RUNS: Table = Run.__table__  # type: ignore[attr-defined]
_NEW_COLUMNS = (
    "id", "tenant_id", "app", "status", "input", "meta", "webhook", "chain", "hop_index",
    "attempt_count", "routing_version", "policy", "max_attempts", "deadline_at", "created_at",
    "lease_expires_at",
)  # fmt: skip
#: The columns a new run sets, the same for every row (one executemany); the others stay NULL.
_INSERT = insert(RUNS).values({name: bindparam(name) for name in _NEW_COLUMNS})


@dataclass(frozen=True)
class NewRun:
    """A queued run's row, not yet stored."""

    values: dict[str, Any]

    @property
    def id(self) -> str:
        run_id: str = self.values["id"]
        return run_id

    @property
    def created_at(self) -> datetime:
        created: datetime = self.values["created_at"]
        return created

    @property
    def first_provider(self) -> str:
        provider: str = self.values["chain"][0]["provider"]
        return provider


def chain_snapshot(chain: Sequence[Hop]) -> list[dict[str, Any]]:
    """The chain as a run stores it."""
    return [hop.model_dump(exclude_none=True) for hop in chain]


def new_run(
    *,
    tenant_id: str,
    app: str,
    input: dict[str, Any],
    chain: list[dict[str, Any]],
    requeue_after_s: float,
    meta: dict[str, str] | None = None,
    webhook: str | None = None,
    routing_version: int | None = None,
    policy: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    deadline_s: float | None = None,
) -> NewRun:
    """A queued run (``chain`` as ``chain_snapshot`` gives it); at ``lease_expires_at`` the
    sweeper re-sends its message if still untouched. ``deadline_s`` counts from now: the run
    stops moving along its chain at ``deadline_at``."""
    now = utcnow()
    return NewRun(
        {
            "id": new_id("run"),
            "tenant_id": tenant_id,
            "app": app,
            "status": "queued",
            "input": input,
            "meta": meta,
            "webhook": webhook,
            "chain": chain,
            "hop_index": 0,
            "attempt_count": 0,
            "routing_version": routing_version,
            "policy": policy,
            "max_attempts": max_attempts,
            "deadline_at": None if deadline_s is None else now + timedelta(seconds=deadline_s),
            "created_at": now,
            "lease_expires_at": now + timedelta(seconds=requeue_after_s),
        }
    )


def insert_runs(connection: Connection, runs: Sequence[NewRun]) -> None:
    """Write the runs: one statement, executed once per row by the driver."""
    if runs:
        connection.execute(_INSERT, [run.values for run in runs])


def delete_runs(connection: Connection, run_ids: Sequence[str]) -> None:
    """Undo ``insert_runs`` for runs whose messages could not be enqueued."""
    if run_ids:
        connection.execute(delete(RUNS).where(RUNS.c.id.in_(run_ids)))


def create_run(session: Session, *, chain: list[Hop], **fields: Any) -> NewRun:
    """One run written in ``session``'s transaction (``new_run``'s fields, ``chain`` as hops)."""
    run = new_run(chain=chain_snapshot(chain), **fields)
    insert_runs(session.connection(), [run])
    return run


def get_run(session: Session, tenant_id: str, run_id: str) -> Run | None:
    """A tenant's run; another tenant's run is as absent as one that never existed."""
    run = session.get(Run, run_id)
    if run is None or run.tenant_id != tenant_id:
        return None
    return run


def list_runs(
    session: Session,
    tenant_id: str,
    *,
    limit: int,
    cursor: str | None = None,
    status: str | None = None,
    app: str | None = None,
) -> list[Run]:
    """Newest first; ``cursor`` is the id of the last run of the previous page."""
    query = select(Run).where(Run.tenant_id == tenant_id)
    if cursor:
        query = query.where(col(Run.id) < cursor)
    if status:
        query = query.where(Run.status == status)
    if app:
        query = query.where(Run.app == app)
    return list(session.exec(query.order_by(col(Run.id).desc()).limit(limit)).all())


def attempts_of(session: Session, run_ids: list[str]) -> dict[str, list[Attempt]]:
    """Every attempt of the given runs, by run id, in order."""
    found: dict[str, list[Attempt]] = {run_id: [] for run_id in run_ids}
    if run_ids:
        rows = session.exec(
            select(Attempt).where(col(Attempt.run_id).in_(run_ids)).order_by(col(Attempt.number))
        )
        for attempt in rows:
            found[attempt.run_id].append(attempt)
    return found
