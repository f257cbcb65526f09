"""``/v1/runs``: read one run, list them. Submitting is ``dispatcher.api.submit``."""

import functools
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session

from dispatcher.api import events, webhooks
from dispatcher.api.deps import UNAUTHORIZED, ServicesDep, TenantDep
from dispatcher.api.errors import ApiError
from dispatcher.runviews import run_public
from dispatcher.services import Services
from dispatcher.store import runs as store
from schemas.runs import RunPage, RunPublic, RunStatus

router = APIRouter(prefix="/v1", tags=["runs"])

_ERRORS = UNAUTHORIZED
Prefer = Annotated[
    str | None, Header(description="`wait=N`: answer once the run is over, or after N seconds")
]


def read_run(services: Services, tenant_id: str, run_id: str) -> RunPublic | None:
    with Session(services.engine) as session:
        run = store.get_run(session, tenant_id, run_id)
        if run is None:
            return None
        return run_public(run, store.attempts_of(session, [run.id])[run.id])


@router.get("/runs/{run_id}", response_model=RunPublic, responses=_ERRORS)
async def get_run(
    run_id: str,
    tenant_id: TenantDep,
    services: ServicesDep,
    request: Request,
    response: Response,
    prefer: Prefer = None,
) -> RunPublic:
    """The run. With ``Prefer: wait=N``, once it is over or after N seconds. Once served,
    ``X-Dispatcher-Provider`` names the provider and credential that served it."""
    wait_s = events.wait_preference(prefer)
    if wait_s is None:
        run = await run_in_threadpool(read_run, services, tenant_id, run_id)
    else:
        load = functools.partial(read_run, services, tenant_id, run_id)
        watch = events.watch_of(request)
        run = await events.wait_for_run(watch, run_id, tenant_id, load, wait_s)
    if run is None:
        raise ApiError(404, "not_found", f"no run {run_id!r}")
    response.headers.update(served_by(run))
    return run


def served_by(run: RunPublic) -> dict[str, str]:
    """``X-Dispatcher-Provider: openai; credential=byok:main`` once a provider served the run."""
    if run.provider is None:
        return {}
    credential = "shared" if run.credential_kind == "shared" else f"byok:{run.credential_name}"
    return {"X-Dispatcher-Provider": f"{run.provider}; credential={credential}"}


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


# Server-sent events, and webhook secrets and deliveries, under the same /v1.
router.include_router(events.router)
router.include_router(webhooks.router)
