"""A run as the API shows it (``RunPublic``), from its stored values: the one builder behind
``GET /v1/runs/{id}``, the run a webhook delivers, and the run a worker hands to waiting
clients with its terminal event. It reads attributes only, so a store row and a worker's
values of the same run give the same body."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from schemas.inference import Usage
from schemas.runs import AttemptPublic, ProviderJob, RunError, RunPublic, Timings


class RunValues(Protocol):
    """The run's columns that ``RunPublic`` shows (``dispatcher.models.Run`` has them)."""

    @property
    def id(self) -> str: ...
    @property
    def app(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def output(self) -> dict[str, Any] | None: ...
    @property
    def error(self) -> dict[str, Any] | None: ...
    @property
    def usage(self) -> dict[str, Any] | None: ...
    @property
    def provider(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def credential_kind(self) -> str | None: ...
    @property
    def credential_name(self) -> str | None: ...
    @property
    def meta(self) -> dict[str, str] | None: ...
    @property
    def routing_version(self) -> int | None: ...
    @property
    def policy(self) -> str | None: ...
    @property
    def pending_job(self) -> dict[str, Any] | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def finished_at(self) -> datetime | None: ...


class AttemptValues(Protocol):
    """An attempt (``dispatcher.models.Attempt``; a worker's ``AttemptRow``): ``attempt_public``
    reads every field of ``AttemptPublic`` from the attribute of the same name, and the run
    sums their costs."""

    @property
    def cost_usd(self) -> float: ...


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000, 3)


def attempt_public(attempt: AttemptValues) -> AttemptPublic:
    """Every field ``AttemptPublic`` has, read from the attempt's attribute of the same name."""
    return AttemptPublic.model_validate(
        {name: getattr(attempt, name) for name in AttemptPublic.model_fields}
    )


def run_public(run: RunValues, attempts: Sequence[AttemptValues]) -> RunPublic:
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
