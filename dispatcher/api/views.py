"""Store rows -> API bodies, and bodies -> the bytes of a response."""

from datetime import datetime

from fastapi import Response
from pydantic import BaseModel

from dispatcher.models import Attempt, Run
from schemas.inference import Usage
from schemas.runs import (
    AttemptPublic,
    ProviderJob,
    RunAccepted,
    RunError,
    RunPublic,
    RunUrls,
    Timings,
)


def run_url(run_id: str) -> str:
    return f"/v1/runs/{run_id}"


def run_accepted(run_id: str, app: str, created_at: datetime) -> RunAccepted:
    """The 202 of a run, from values already checked (built, not validated again)."""
    return RunAccepted.model_construct(
        id=run_id,
        status="queued",
        app=app,
        created_at=created_at,
        urls=RunUrls.model_construct(self=run_url(run_id)),
    )


def json_response(
    body: BaseModel, status_code: int, headers: dict[str, str] | None = None
) -> Response:
    """``body`` serialized once, as it is: FastAPI does not validate a ``Response`` again
    against the route's ``response_model`` (which still documents it)."""
    return Response(
        body.__pydantic_serializer__.to_json(body), status_code, headers, "application/json"
    )


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000, 3)


def attempt_public(attempt: Attempt) -> AttemptPublic:
    return AttemptPublic.model_validate(
        attempt.model_dump()
        | {"usage": Usage.model_validate(attempt.usage) if attempt.usage else None}
    )


def run_public(run: Run, attempts: list[Attempt]) -> RunPublic:
    return RunPublic(
        id=run.id,
        app=run.app,
        status=run.status,
        output=run.output,
        error=RunError.model_validate(run.error) if run.error else None,
        usage=Usage.model_validate(run.usage) if run.usage else None,
        cost_usd=round(sum(attempt.cost_usd for attempt in attempts), 8),
        provider=run.provider,
        model=run.model,
        credential_kind=run.credential_kind,
        credential_name=run.credential_name,
        metadata=run.meta,
        routing_version=run.routing_version,
        policy=run.policy,
        pending_job=ProviderJob.model_validate(run.pending_job) if run.pending_job else None,
        attempts=[attempt_public(attempt) for attempt in attempts],
        timings=Timings(
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            queued_ms=_ms(run.created_at, run.started_at),
            total_ms=_ms(run.created_at, run.finished_at),
        ),
        created_at=run.created_at,
    )
