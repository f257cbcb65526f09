"""Store rows -> API bodies."""

from datetime import datetime

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


def run_accepted(run: Run) -> RunAccepted:
    return RunAccepted(
        id=run.id,
        status="queued",
        app=run.app,
        created_at=run.created_at,
        urls=RunUrls(self=run_url(run.id)),
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
