"""``POST /v1/runs/{id}/cancel``."""

from fastapi import APIRouter
from sqlmodel import Session

from dispatcher.api.deps import ServicesDep, TenantDep
from dispatcher.api.errors import ApiError
from dispatcher.api.views import run_public
from dispatcher.store import lifecycle, runs
from schemas.runs import RunPublic

router = APIRouter(prefix="/v1", tags=["runs"])


@router.post("/runs/{run_id}/cancel", response_model=RunPublic)
def cancel_run(run_id: str, tenant_id: TenantDep, services: ServicesDep) -> RunPublic:
    """A queued run never reaches a provider; a running one is marked and its result
    discarded; a finished one answers 409 with its status."""
    with Session(services.engine) as session:
        status, canceled = lifecycle.cancel(session, tenant_id, run_id)
        session.commit()
        if status is None:
            raise ApiError(404, "not_found", f"no run {run_id!r}")
        if canceled:
            services.events.publish(run_id, tenant_id, "canceled")
        else:
            raise ApiError(409, "already_finished", f"run {run_id} is {status}", {"status": status})
        run = runs.get_run(session, tenant_id, run_id)
        assert run is not None
        return run_public(run, runs.attempts_of(session, [run_id])[run_id])
