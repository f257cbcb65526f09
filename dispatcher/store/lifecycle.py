"""A run's state machine, as conditional updates.

    queued --claim--> running --record(Succeed)--> succeeded
                         |----record(NextHop)----> queued (next hop, maybe after a delay)
                         |----record(Fail)-------> failed
                         |----release(...)-------> queued or failed, no attempt made
                         |----park(job)----------> running, unclaimed, waiting on a provider's
                         |                         job (claim_job takes it to poll it once)
                         '----lease lapses-------> queued (the sweeper sends it again)

Every transition names the state it expects, so a duplicated or redelivered message,
or a worker that lost its lease, changes nothing: exactly one result, one attempt row
and one usage event per attempt.

A parked run (``pending_job`` set: a fal job submitted, not done) is never claimed or swept
as a hop again -- that would submit a second, paid job. Its lease is the time of its next
poll plus a grace: ``claim_job`` takes it once the poll is due, the sweeper sends a poll
message when the grace has passed too (a lost message, a dead poller), and a canceled run
still holding a job gives it up once (``drop_canceled_job``) to be canceled at the provider.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Update, case, func, literal
from sqlmodel import Session, and_, col, or_, select, update

from dispatcher.db import UTCDateTime, utcnow
from dispatcher.models import Attempt, Run, UsageEvent
from schemas.hops import Hop
from schemas.inference import Usage
from schemas.routing import DEFAULT_MAX_ATTEMPTS

#: A poll message may arrive this much before its poll is due (clocks of other processes).
POLL_EARLY_S = 0.5


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one attempt of a run; ``token`` proves it when recording."""

    run_id: str
    tenant_id: str
    app: str
    input: dict[str, Any]
    chain: list[Hop]
    hop_index: int
    attempt: int
    token: str
    created_at: datetime
    #: The run's routing policy (None: routed before policies existed) and its bounds.
    policy: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    deadline_at: datetime | None = None
    #: The provider's job this attempt waits on (a poll's claim); None for a fresh attempt.
    job: dict[str, Any] | None = None

    @property
    def hop(self) -> Hop:
        return self.chain[self.hop_index]


@dataclass(frozen=True)
class CanceledJob:
    """A canceled run's provider job, given up by the run to be canceled at the provider."""

    run_id: str
    tenant_id: str
    hop: Hop
    job: dict[str, Any]


@dataclass(frozen=True)
class Succeed:
    output: dict[str, Any]
    usage: Usage


@dataclass(frozen=True)
class NextHop:
    """Queue the run again at ``hop`` (possibly the same one), after ``delay_s``."""

    hop: int
    provider: str
    delay_s: float = 0.0


@dataclass(frozen=True)
class Fail:
    code: str
    message: str
    status_code: int | None = None


Decision = Succeed | NextHop | Fail


def claim_run(session: Session, run_id: str, hop_index: int, lease_s: float) -> Claim | None:
    """Take a queued run (or one whose lease lapsed) at ``hop_index``; None if not ours to take."""
    now = utcnow()
    claimable = or_(
        col(Run.status) == "queued",
        and_(col(Run.status) == "running", col(Run.lease_expires_at) < now),
    )
    return _take(
        session,
        run_id,
        hop_index,
        (claimable, col(Run.pending_job).is_(None)),
        {
            "status": "running",
            "lease_expires_at": now + timedelta(seconds=lease_s),
            "attempt_count": col(Run.attempt_count) + 1,
            "started_at": func.coalesce(col(Run.started_at), literal(now, UTCDateTime())),
        },
    )


def claim_job(
    session: Session, run_id: str, hop_index: int, lease_s: float, grace_s: float
) -> Claim | None:
    """Take a parked run at ``hop_index`` to poll its job once: when the poll is due (``park``
    set the lease to its time plus ``grace_s``), or when its poller's lease lapsed. The claim
    carries the job and the attempt the job belongs to; None if not ours to take (an early
    duplicate message, a poll in flight, the run moved on or ended)."""
    now = utcnow()
    due = or_(
        and_(
            col(Run.claim_token).is_(None),
            col(Run.lease_expires_at) <= now + timedelta(seconds=grace_s + POLL_EARLY_S),
        ),
        col(Run.lease_expires_at) < now,
    )
    parked = (col(Run.status) == "running", col(Run.pending_job).is_not(None), due)
    return _take(
        session, run_id, hop_index, parked, {"lease_expires_at": now + timedelta(seconds=lease_s)}
    )


def _take(
    session: Session,
    run_id: str,
    hop_index: int,
    where: tuple[ColumnElement[bool], ...],
    values: dict[str, Any],
) -> Claim | None:
    """A claim on the run at ``hop_index``, if it matches ``where``; ``values`` are written."""
    token = uuid.uuid4().hex
    row = session.exec(
        update(Run)
        .where(col(Run.id) == run_id, col(Run.hop_index) == hop_index, *where)
        .values(**values, claim_token=token)
        .returning(
            col(Run.tenant_id),
            col(Run.app),
            col(Run.input),
            col(Run.chain),
            col(Run.attempt_count),
            col(Run.created_at),
            col(Run.policy),
            col(Run.max_attempts),
            col(Run.deadline_at),
            col(Run.pending_job),
        )
    ).first()
    if row is None:
        return None
    tenant_id, app, input_, chain, attempt, created_at, policy, max_attempts, deadline, job = row
    return Claim(
        run_id=run_id,
        tenant_id=tenant_id,
        app=app,
        input=input_,
        chain=[Hop.model_validate(hop) for hop in chain],
        hop_index=hop_index,
        attempt=attempt,
        token=token,
        created_at=created_at,
        policy=policy,
        max_attempts=max_attempts,
        deadline_at=deadline,
        job=job,
    )


def record(
    session: Session, claim: Claim, attempt: Attempt, decision: Decision, *, requeue_after_s: float
) -> bool:
    """Write one attempt, its usage event, and the run's next state, if the claim still holds.

    False (and nothing written) when the lease was lost to another worker or the run ended.
    """
    result = session.exec(
        _held(claim).values(**_next_state(decision, claim, utcnow(), requeue_after_s))
    )
    if result.rowcount != 1:
        return False
    session.add(attempt)
    session.flush()
    assert attempt.id is not None
    session.add(_usage_event(claim, attempt))
    return True


def release(
    session: Session, claim: Claim, decision: NextHop | Fail, *, requeue_after_s: float
) -> bool:
    """End a claim that made no attempt (its hop was cooling down): the run moves on as
    ``decision`` says and gets its attempt back; no attempt row, no usage event.

    False (and nothing written) when the claim no longer holds.
    """
    state = _next_state(decision, claim, utcnow(), requeue_after_s)
    result = session.exec(_held(claim).values(**state, attempt_count=col(Run.attempt_count) - 1))
    return result.rowcount == 1


def park(
    session: Session, claim: Claim, job: dict[str, Any], poll_at: datetime, grace_s: float
) -> bool:
    """The attempt waits on ``job`` at its provider: store the job on the run and let the claim
    go (the run stays ``running``) until its poll at ``poll_at``; nothing is recorded yet.

    False (and nothing written) when the claim no longer holds.
    """
    lease = poll_at + timedelta(seconds=grace_s)
    result = session.exec(
        _held(claim).values(pending_job=job, claim_token=None, lease_expires_at=lease)
    )
    return result.rowcount == 1


def drop_canceled_job(session: Session, run_id: str) -> CanceledJob | None:
    """A canceled run's provider job, taken off the run once: only one caller gets it (and
    cancels it at the provider). None when the run is not canceled or holds no job."""
    holding = (
        col(Run.id) == run_id,
        col(Run.status) == "canceled",
        col(Run.pending_job).is_not(None),
    )
    row = session.exec(
        select(Run.tenant_id, Run.chain, Run.hop_index, Run.pending_job).where(*holding)
    ).first()
    if row is None:
        return None
    result = session.exec(update(Run).where(*holding).values(pending_job=None))
    if result.rowcount != 1:
        return None
    tenant_id, chain, hop_index, job = row
    return CanceledJob(run_id, tenant_id, Hop.model_validate(chain[hop_index]), dict(job or {}))


def _held(claim: Claim) -> Update:
    """An update of the run, applying only while ``claim`` still holds it."""
    return (
        update(Run)
        .where(col(Run.id) == claim.run_id, col(Run.claim_token) == claim.token)
        .where(col(Run.status) == "running")
    )


def _next_state(
    decision: Decision, claim: Claim, now: datetime, requeue_after_s: float
) -> dict[str, Any]:
    released: dict[str, Any] = {"claim_token": None, "pending_job": None}
    match decision:
        case Succeed(output=output, usage=usage):
            hop = claim.hop
            return released | {
                "status": "succeeded",
                "output": output,
                "usage": usage.model_dump(),
                "provider": hop.provider,
                "model": hop.model,
                "credential_kind": hop.credential_kind,
                "credential_name": hop.credential_name,
                "finished_at": now,
                "lease_expires_at": None,
            }
        case NextHop(hop=hop_index, delay_s=delay_s):
            return released | {
                "status": "queued",
                "hop_index": hop_index,
                # If the message is lost, the sweeper sends it again after this.
                "lease_expires_at": now + timedelta(seconds=delay_s + requeue_after_s),
            }
        case Fail(code=code, message=message, status_code=status_code):
            error = {"code": code, "message": message, "provider": claim.hop.provider}
            return released | {
                "status": "failed",
                "error": error | {"status_code": status_code},
                "finished_at": now,
                "lease_expires_at": None,
            }
    raise TypeError(decision)


def _usage_event(claim: Claim, attempt: Attempt) -> UsageEvent:
    usage = Usage.model_validate(attempt.usage or {})
    assert attempt.id is not None
    return UsageEvent(
        attempt_id=attempt.id,
        tenant_id=claim.tenant_id,
        run_id=claim.run_id,
        app=claim.app,
        provider=attempt.provider,
        model=attempt.model,
        credential_kind=attempt.credential_kind,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        units=usage.units,
        latency_ms=attempt.latency_ms,
        outcome=attempt.outcome,
        cost_usd=attempt.cost_usd,
        billed_to="tenant_cloud" if attempt.credential_kind == "byok" else "platform",
    )


def cancel(
    session: Session, tenant_id: str, run_id: str, grace_s: float = 30.0
) -> tuple[str | None, bool]:
    """Cancel a queued or running run: (its status afterwards, whether this call canceled it);
    (None, False) when the tenant has no such run. A running attempt's outcome is then
    discarded: recording it needs the status to still be ``running``. A run parked on a
    provider's job keeps the job until ``drop_canceled_job`` takes it; if no poll message
    comes for it, the sweeper sends one after ``grace_s``."""
    now = utcnow()
    job_kept = now + timedelta(seconds=grace_s)
    result = session.exec(
        update(Run)
        .where(col(Run.id) == run_id, col(Run.tenant_id) == tenant_id)
        .where(col(Run.status).in_(("queued", "running")))
        .values(
            status="canceled",
            claim_token=None,
            lease_expires_at=case((col(Run.pending_job).is_(None), None), else_=job_kept),
            finished_at=now,
            error={"code": "canceled", "message": "canceled by request"},
        )
    )
    if result.rowcount == 1:
        return "canceled", True
    status = session.exec(
        select(Run.status).where(col(Run.id) == run_id, col(Run.tenant_id) == tenant_id)
    ).first()
    return status, False


def renew_leases(session: Session, tokens: dict[str, str], lease_s: float) -> int:
    """Extend the leases of the runs a live worker holds (run id -> claim token)."""
    if not tokens:
        return 0
    result = session.exec(
        update(Run)
        .where(col(Run.id).in_(list(tokens)), col(Run.claim_token).in_(list(tokens.values())))
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
    )
    return result.rowcount


def sweep(session: Session, requeue_after_s: float, limit: int = 500) -> list[tuple[str, int, str]]:
    """Take back runs whose lease lapsed (dead worker) or whose message was lost.

    Returns (run id, hop index, provider) for each run this call took; the caller enqueues
    them. Each take is itself conditional, so concurrent sweepers never both take a run.
    Parked runs are ``sweep_jobs``'s.
    """
    stale = (col(Run.status).in_(("queued", "running")), col(Run.pending_job).is_(None))
    requeued = {"status": "queued", "claim_token": None}
    return _sweep(session, stale, requeued, requeue_after_s, limit)


def sweep_jobs(session: Session, grace_s: float, limit: int = 500) -> list[tuple[str, int, str]]:
    """Take back parked runs whose poll is overdue (a lost message, a dead poller), and
    canceled runs whose job was not given up yet: (run id, hop index, provider) for each, to
    send a poll message to (never a hop message: that would submit the job again). A taken
    run's poll is due at once; if that message is lost too, the next sweep after ``grace_s``
    takes it again."""
    stale = (col(Run.status).in_(("running", "canceled")), col(Run.pending_job).is_not(None))
    return _sweep(session, stale, {"claim_token": None}, grace_s, limit)


def _sweep(
    session: Session,
    stale: tuple[ColumnElement[bool], ...],
    values: dict[str, Any],
    lease_s: float,
    limit: int,
) -> list[tuple[str, int, str]]:
    now = utcnow()
    lapsed = col(Run.lease_expires_at) < now
    found = session.exec(
        select(Run.id, Run.status, Run.hop_index, Run.chain).where(*stale, lapsed).limit(limit)
    ).all()
    taken = []
    for run_id, status, hop_index, chain in found:
        result = session.exec(
            update(Run)
            .where(col(Run.id) == run_id, col(Run.status) == status, lapsed, *stale)
            .values(**values, lease_expires_at=now + timedelta(seconds=lease_s))
        )
        if result.rowcount == 1:
            taken.append((run_id, hop_index, chain[hop_index]["provider"]))
    return taken
