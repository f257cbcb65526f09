"""The rules for a provider's job a run waits on (fal): when it is polled next, when it is
given up, and what the run and its attempt keep of it. Pure functions of the claim, the
provider's answer and the time."""

from datetime import datetime, timedelta
from typing import Any

from dispatcher.db import utcnow
from dispatcher.store.lifecycle import Claim
from schemas.inference import InferenceResult
from workers.providers.errors import ProviderError
from workers.providers.fal import FalPending

#: How long a provider's job may take when its run has no deadline.
MAX_JOB_S = 3600.0


def submitted_at(job: dict[str, Any] | None) -> datetime | None:
    """When the provider's job was submitted (the start of its attempt)."""
    return None if job is None else datetime.fromisoformat(job["submitted_at"])


def job_record(pending: FalPending, submitted: datetime) -> dict[str, Any]:
    """What a run stores (and shows) of the job its attempt waits on; JSON-safe, and what the
    next poll reads back with ``FalJob.from_dict``."""
    where = {"status": pending.status, "queue_position": pending.queue_position}
    return pending.job.as_dict() | where | {"submitted_at": submitted.isoformat()}


def finished_job(
    job: dict[str, Any] | None, outcome: InferenceResult | ProviderError
) -> dict[str, Any] | None:
    """The job as its attempt keeps it: its handle, and how it ended."""
    if job is None:
        return None
    ended = {k: v for k, v in job.items() if k not in ("next_poll_at", "queue_position")}
    return ended | {"status": "COMPLETED" if isinstance(outcome, InferenceResult) else "FAILED"}


def job_bound(claim: Claim, submitted: datetime) -> datetime:
    """The latest a provider's job may end: the run's deadline, else ``MAX_JOB_S`` after its
    submission."""
    return claim.deadline_at or submitted + timedelta(seconds=MAX_JOB_S)


def next_poll_at(claim: Claim, pending: FalPending, now: datetime | None = None) -> datetime | None:
    """When to poll the job again: after the delay it asks for, never past its bound; None
    once the bound has passed (the job is given up)."""
    now = now or utcnow()
    bound = job_bound(claim, submitted_at(claim.job) or now)
    if now >= bound:
        return None
    return min(now + timedelta(seconds=pending.delay_s), bound)
