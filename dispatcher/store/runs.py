"""Creating and reading runs. State transitions live in ``dispatcher.store.lifecycle``."""

from datetime import timedelta
from typing import Any

from sqlmodel import Session, col, delete, select

from dispatcher.db import utcnow
from dispatcher.ids import new_id
from dispatcher.models import Attempt, Run
from schemas.hops import Hop
from schemas.routing import DEFAULT_MAX_ATTEMPTS


def create_run(
    session: Session,
    *,
    tenant_id: str,
    app: str,
    input: dict[str, Any],
    chain: list[Hop],
    requeue_after_s: float,
    meta: dict[str, str] | None = None,
    webhook: str | None = None,
    routing_version: int | None = None,
    policy: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    deadline_s: float | None = None,
) -> Run:
    """A queued run; at ``lease_expires_at`` the sweeper re-sends its message if still untouched.

    ``deadline_s`` counts from now: the run stops moving along its chain at ``deadline_at``.
    """
    now = utcnow()
    run = Run(
        id=new_id("run"),
        tenant_id=tenant_id,
        app=app,
        status="queued",
        input=input,
        meta=meta,
        webhook=webhook,
        chain=[hop.model_dump(exclude_none=True) for hop in chain],
        routing_version=routing_version,
        policy=policy,
        max_attempts=max_attempts,
        deadline_at=None if deadline_s is None else now + timedelta(seconds=deadline_s),
        created_at=now,
        lease_expires_at=now + timedelta(seconds=requeue_after_s),
    )
    session.add(run)
    return run


def delete_run(session: Session, run_id: str) -> None:
    """Undo ``create_run`` when its message could not be enqueued."""
    session.exec(delete(Run).where(col(Run.id) == run_id))


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
