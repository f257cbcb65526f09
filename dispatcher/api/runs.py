"""``/v1/run`` and ``/v1/runs``: submit a run, read one, list them."""

from typing import Annotated, Any

import redis
from fastapi import APIRouter, Query
from sqlmodel import Session

from dispatcher.api.deps import ServicesDep, TenantDep
from dispatcher.api.errors import ApiError
from dispatcher.api.routing import route_run
from dispatcher.api.views import run_accepted, run_public
from dispatcher.queue import enqueue_hop
from dispatcher.services import Services
from dispatcher.store import runs as store
from schemas.runs import RunAccepted, RunCreate, RunPage, RunPublic, RunStatus

router = APIRouter(prefix="/v1", tags=["runs"])

_ERRORS: dict[int | str, dict[str, Any]] = {401: {"description": "missing or wrong API key"}}


@router.post("/run", status_code=202, response_model=RunAccepted, responses=_ERRORS)
def submit_run(body: RunCreate, tenant_id: TenantDep, services: ServicesDep) -> RunAccepted:
    """Queue a run. Nothing is stored or enqueued unless the whole request is valid."""
    with Session(services.engine) as session:
        routed = route_run(session, services, tenant_id, body.app, body.routing)
        chain = routed.resolution.chain
        run = store.create_run(
            session,
            tenant_id=tenant_id,
            app=body.app,
            input=body.input,
            chain=chain,
            requeue_after_s=services.settings.requeue_after_s,
            meta=body.metadata,
            webhook=str(body.webhook) if body.webhook else None,
            routing_version=routed.version,
            policy=routed.resolution.policy,
            max_attempts=routed.resolution.max_attempts,
            deadline_s=routed.resolution.deadline_s,
        )
        session.commit()
        accepted = run_accepted(run)
    _enqueue_or_undo(services, accepted.id, chain[0].provider)
    return accepted


def _enqueue_or_undo(services: Services, run_id: str, provider: str) -> None:
    try:
        enqueue_hop(services.broker, run_id, 0, provider)
    except redis.RedisError:
        with Session(services.engine) as session:
            store.delete_run(session, run_id)
            session.commit()
        raise ApiError(
            503, "queue_unavailable", "the queue is not answering; nothing was stored"
        ) from None


@router.get("/runs/{run_id}", response_model=RunPublic, responses=_ERRORS)
def get_run(run_id: str, tenant_id: TenantDep, services: ServicesDep) -> RunPublic:
    with Session(services.engine) as session:
        run = store.get_run(session, tenant_id, run_id)
        if run is None:
            raise ApiError(404, "not_found", f"no run {run_id!r}")
        return run_public(run, store.attempts_of(session, [run.id])[run.id])


@router.get("/runs", response_model=RunPage, responses=_ERRORS)
def list_runs(
    tenant_id: TenantDep,
    services: ServicesDep,
    status: RunStatus | None = None,
    app: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> RunPage:
    """Newest first. Pass ``next_cursor`` back as ``cursor`` for the next page."""
    with Session(services.engine) as session:
        runs = store.list_runs(
            session, tenant_id, limit=limit + 1, cursor=cursor, status=status, app=app
        )
        page, more = runs[:limit], len(runs) > limit
        attempts = store.attempts_of(session, [run.id for run in page])
        return RunPage(
            data=[run_public(run, attempts[run.id]) for run in page],
            next_cursor=page[-1].id if more else None,
        )
