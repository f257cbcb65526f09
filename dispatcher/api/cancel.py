"""``POST /v1/runs/{id}/cancel``."""

import redis
import structlog
from fastapi import APIRouter
from sqlmodel import Session

from dispatcher.api.deps import ServicesDep, TenantDep
from dispatcher.api.errors import ApiError
from dispatcher.models import Run
from dispatcher.queue import enqueue_poll
from dispatcher.runviews import run_public
from dispatcher.services import Services
from dispatcher.store import lifecycle, runs
from schemas.runs import RunPublic

router = APIRouter(prefix="/v1", tags=["runs"])

log = structlog.get_logger(__name__)


@router.post("/runs/{run_id}/cancel", response_model=RunPublic)
def cancel_run(run_id: str, tenant_id: TenantDep, services: ServicesDep) -> RunPublic:
    """A queued run never reaches a provider; a running one is marked and its result
    discarded (a job it waits on at a provider is canceled there too); a finished one
    answers 409 with its status."""
    with Session(services.engine) as session:
        status, canceled = lifecycle.cancel(
            session, tenant_id, run_id, grace_s=services.settings.lease_s
        )
        session.commit()
        if status is None:
            raise ApiError(404, "not_found", f"no run {run_id!r}")
        if not canceled:
            raise ApiError(409, "already_finished", f"run {run_id} is {status}", {"status": status})
        services.events.publish(run_id, tenant_id, "canceled")
        run = runs.get_run(session, tenant_id, run_id)
        assert run is not None
        if run.pending_job is not None:
            _cancel_job(services, run)
        return run_public(run, runs.attempts_of(session, [run_id])[run_id])


def _cancel_job(services: Services, run: Run) -> None:
    """Send the run's poll message now: its poller cancels the job at the provider (it holds
    the credential). If Redis does not take it, the workers' sweeper sends it later."""
    provider = run.chain[run.hop_index]["provider"]
    try:
        enqueue_poll(services.broker, run.id, run.hop_index, provider)
    except redis.RedisError as exc:
        log.warning("job cancel not sent; the sweeper will", run_id=run.id, error=str(exc))
