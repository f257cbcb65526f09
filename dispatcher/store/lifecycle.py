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

The workers' transitions run for every run, so they are prebuilt Core statements on a
``Connection`` (no ORM unit of work, no statement built per call), and the two that every run
takes come in batches: ``claim_runs`` takes many runs in one ``UPDATE ... RETURNING``, and
``record`` writes many attempts' outcomes in one transaction. ``cancel``, the API's, runs on
its ``Session``.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    Update,
    and_,
    bindparam,
    case,
    func,
    insert,
    null,
    or_,
    select,
    tuple_,
    update,
)
from sqlmodel import Session

from dispatcher.db import utcnow
from dispatcher.models import Attempt, Run, UsageEvent
from dispatcher.runviews import run_public
from schemas.hops import Hop
from schemas.inference import Usage
from schemas.routing import DEFAULT_MAX_ATTEMPTS
from schemas.runs import RunPublic

#: A poll message may arrive this much before its poll is due (clocks of other processes).
POLL_EARLY_S = 0.5

RUNS: Table = Run.__table__  # type: ignore[attr-defined]
ATTEMPTS: Table = Attempt.__table__  # type: ignore[attr-defined]
USAGE: Table = UsageEvent.__table__  # type: ignore[attr-defined]
_RUN = RUNS.c


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one attempt of a run; ``token`` proves it when recording. The runs
    claimed together share a token: each claim of a run gets a new one, which is all a
    late or duplicate holder needs to be told apart."""

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
    #: What the run shows besides (``dispatcher.runviews``): its first claim's time, its
    #: metadata and the routing config version it was routed with.
    started_at: datetime | None = None
    meta: dict[str, str] | None = None
    routing_version: int | None = None
    #: A client waits on the run (its message said so): its end is told whole
    #: (``ended_run``).
    waited: bool = False

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


@dataclass
class AttemptRow:
    """One attempt as its ``attempt`` row stores it (the ``Attempt`` table's columns)."""

    run_id: str
    number: int
    hop: int
    provider: str
    model: str | None
    credential_kind: str
    credential_name: str | None
    outcome: str
    latency_ms: float
    started_at: datetime
    finished_at: datetime
    status_code: int | None = None
    error_class: str | None = None
    message: str | None = None
    retry_after_s: float | None = None
    usage: dict[str, Any] | None = None
    cost_usd: float = 0.0
    #: The provider's job this attempt submitted and polled (fal: request id and URLs).
    provider_job: dict[str, Any] | None = None


@dataclass(frozen=True)
class Outcome:
    """What one attempt's end writes: its row, and where its run goes next."""

    claim: Claim
    attempt: AttemptRow
    decision: Decision


# -- claims ----------------------------------------------------------------------------------

#: A claimed run's columns, in the order of ``Claim``'s fields (the token aside).
_RETURNED = (
    _RUN.id, _RUN.tenant_id, _RUN.app, _RUN.input, _RUN.chain, _RUN.hop_index,
    _RUN.attempt_count, _RUN.created_at, _RUN.policy, _RUN.max_attempts, _RUN.deadline_at,
    _RUN.pending_job, _RUN.started_at, _RUN.meta, _RUN.routing_version,
)  # fmt: skip


def _pairs(column: Any, name: str) -> ColumnElement[bool]:
    """``(id, column)`` among the pairs bound as ``name`` (``_pair_params``). The pairs' ids
    are bound again on their own: SQLite finds rows by a row value only by scanning (the
    whole table, or every run of a status), so the ids lead it to the primary key."""
    return and_(
        _RUN.id.in_(bindparam(f"{name}_ids", expanding=True)),
        tuple_(_RUN.id, column).in_(bindparam(name, expanding=True)),
    )


def _pair_params(name: str, pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """The parameters of ``_pairs(..., name)`` for ``pairs`` of (run id, value)."""
    return {name: list(pairs), f"{name}_ids": [run_id for run_id, _ in pairs]}


_AT_HOPS = _pairs(_RUN.hop_index, "keys")
_NOW = bindparam("now", type_=_RUN.lease_expires_at.type)
_LEASE = bindparam("lease", type_=_RUN.lease_expires_at.type)
_CLAIM = (
    update(RUNS)
    .where(
        _AT_HOPS,
        or_(_RUN.status == "queued", and_(_RUN.status == "running", _RUN.lease_expires_at < _NOW)),
        _RUN.pending_job.is_(None),
    )
    .values(
        status="running",
        lease_expires_at=_LEASE,
        attempt_count=_RUN.attempt_count + 1,
        started_at=func.coalesce(_RUN.started_at, _NOW),
        claim_token=bindparam("token"),
    )
    .returning(*_RETURNED)
)
_CLAIM_JOB = (
    update(RUNS)
    .where(
        _AT_HOPS,
        _RUN.status == "running",
        _RUN.pending_job.is_not(None),
        or_(
            and_(
                _RUN.claim_token.is_(None),
                _RUN.lease_expires_at <= bindparam("due", type_=_NOW.type),
            ),
            _RUN.lease_expires_at < _NOW,
        ),
    )
    .values(lease_expires_at=_LEASE, claim_token=bindparam("token"))
    .returning(*_RETURNED)
)


def claim_runs(
    connection: Connection, keys: Sequence[tuple[str, int]], lease_s: float
) -> list[Claim]:
    """Take the queued runs (or those whose lease lapsed) among ``keys`` (run id, hop index),
    each at its hop, in one statement; a key not ours to take (claimed, ended, at another hop,
    parked) is left out of the answer."""
    if not keys:
        return []
    now = utcnow()
    lease = now + timedelta(seconds=lease_s)
    return _take(connection, _CLAIM, _pair_params("keys", keys) | {"now": now, "lease": lease})


def claim_job(
    connection: Connection, run_id: str, hop_index: int, lease_s: float, grace_s: float
) -> Claim | None:
    """Take a parked run at ``hop_index`` to poll its job once: when the poll is due (``park``
    set the lease to its time plus ``grace_s``), or when its poller's lease lapsed. The claim
    carries the job and the attempt the job belongs to; None if not ours to take (an early
    duplicate message, a poll in flight, the run moved on or ended)."""
    now = utcnow()
    params = _pair_params("keys", [(run_id, hop_index)]) | {
        "now": now,
        "due": now + timedelta(seconds=grace_s + POLL_EARLY_S),
        "lease": now + timedelta(seconds=lease_s),
    }
    taken = _take(connection, _CLAIM_JOB, params)
    return taken[0] if taken else None


def _take(connection: Connection, statement: Update, params: dict[str, Any]) -> list[Claim]:
    token = uuid.uuid4().hex
    rows = connection.execute(statement, params | {"token": token}).all()
    return [_claim(row, token) for row in rows]


def _claim(row: Any, token: str) -> Claim:
    """A claim from a returned row. The chain was validated when the run was routed, so its
    hops are built without validating them again."""
    run_id, tenant_id, app, input_, chain, hop_index, attempt, created_at, *rest = row
    hops = [Hop.model_construct(**hop) for hop in chain]
    return Claim(run_id, tenant_id, app, input_, hops, hop_index, attempt, token, created_at, *rest)


# -- outcomes --------------------------------------------------------------------------------


def _bind(name: str) -> Any:
    return bindparam(name, type_=_RUN[name].type)


_HELD = and_(
    _RUN.id == bindparam("run_id"),
    _RUN.claim_token == bindparam("token"),
    _RUN.status == "running",
)
#: Every move off a claim lets the claim go; ``given_back`` returns the attempt (a release).
_LET_GO = {
    "claim_token": null(),
    "pending_job": null(),
    "attempt_count": _RUN.attempt_count - bindparam("given_back"),
}
_ENDED = {"finished_at": _bind("finished_at"), "lease_expires_at": null()}
_MOVES: dict[type, Update] = {
    Succeed: update(RUNS).where(_HELD).values(
        **_LET_GO, **_ENDED, status="succeeded",
        **{name: _bind(name) for name in ("output", "usage", "provider", "model")},
        **{name: _bind(name) for name in ("credential_kind", "credential_name")},
    ),
    NextHop: update(RUNS).where(_HELD).values(
        **_LET_GO, status="queued", hop_index=_bind("hop_index"),
        lease_expires_at=_bind("lease_expires_at"),
    ),
    Fail: update(RUNS).where(_HELD).values(
        **_LET_GO, **_ENDED, status="failed", error=_bind("error")
    ),
}  # fmt: skip
_INSERT_ATTEMPTS = insert(ATTEMPTS).returning(ATTEMPTS.c.id, sort_by_parameter_order=True)
_INSERT_USAGE = insert(USAGE)


_MARK = (
    update(RUNS)
    .where(
        _pairs(_RUN.claim_token, "claims"),
        _RUN.status == "running",
    )
    .values(claim_token=_RUN.claim_token.concat(bindparam("mark")))
    .returning(_RUN.id, _RUN.claim_token)
)


def record(
    connection: Connection,
    outcomes: Sequence[Outcome],
    *,
    requeue_after_s: float,
    now: datetime | None = None,
) -> list[bool]:
    """Write each outcome whose claim still holds: its attempt, its usage event, and the run's
    next state. One answer per outcome: False (and nothing written for it) when the lease was
    lost to another worker or the run ended.

    A handful of statements whatever the number of outcomes: one marks the runs whose claims
    hold (their tokens get a suffix, so the transaction's own writes are all that can match
    them now), then one statement per kind of move, one for the attempts and one for their
    usage events, each executed for many rows at once.
    """
    if not outcomes:
        return []
    now, mark = now or utcnow(), "." + uuid.uuid4().hex
    claims = [(o.claim.run_id, o.claim.token) for o in outcomes]
    rows = connection.execute(_MARK, _pair_params("claims", claims) | {"mark": mark})
    marked = {(run_id, token) for run_id, token in rows}
    held = [(o.claim.run_id, o.claim.token + mark) in marked for o in outcomes]
    written = [o for o, ok in zip(outcomes, held, strict=True) if ok]
    if not written:
        return held
    for kind, statement in _MOVES.items():
        moves = [
            _next_state(o.decision, o.claim, now, requeue_after_s)
            | {"run_id": o.claim.run_id, "token": o.claim.token + mark, "given_back": 0}
            for o in written
            if isinstance(o.decision, kind)
        ]
        if moves:
            connection.execute(statement, moves)
    ids = connection.execute(_INSERT_ATTEMPTS, [vars(o.attempt) for o in written]).scalars()
    usage = [_usage_event(o, attempt_id, now) for o, attempt_id in zip(written, ids, strict=True)]
    connection.execute(_INSERT_USAGE, usage)
    return held


@dataclass(frozen=True)
class _EndedRun:
    """A run's columns as an outcome that ended it left them (``dispatcher.runviews``)."""

    id: str
    app: str
    status: str
    output: dict[str, Any] | None
    error: dict[str, Any] | None
    usage: dict[str, Any] | None
    provider: str | None
    model: str | None
    credential_kind: str | None
    credential_name: str | None
    meta: dict[str, str] | None
    routing_version: int | None
    policy: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    pending_job: dict[str, Any] | None = None


def ended_run(outcome: Outcome, now: datetime) -> RunPublic | None:
    """The run as the store holds it once ``record`` wrote ``outcome`` at ``now``, for the
    client waiting on it, when that is known without reading it: the outcome ended the run
    and its attempt is the run's only one. None otherwise (nobody waits, the run goes on, or
    earlier attempts are only in the store)."""
    claim, decision = outcome.claim, outcome.decision
    if not claim.waited or isinstance(decision, NextHop) or claim.attempt != 1:
        return None
    state = _next_state(decision, claim, now, requeue_after_s=0)
    run = _EndedRun(
        id=claim.run_id,
        app=claim.app,
        status="succeeded" if isinstance(decision, Succeed) else "failed",
        output=state.get("output"),
        error=state.get("error"),
        usage=state.get("usage"),
        provider=state.get("provider"),
        model=state.get("model"),
        credential_kind=state.get("credential_kind"),
        credential_name=state.get("credential_name"),
        meta=claim.meta,
        routing_version=claim.routing_version,
        policy=claim.policy,
        created_at=claim.created_at,
        started_at=claim.started_at,
        finished_at=now,
    )
    return run_public(run, [outcome.attempt])


def release(
    connection: Connection, claim: Claim, decision: NextHop | Fail, *, requeue_after_s: float
) -> bool:
    """End a claim that made no attempt (its hop was cooling down): the run moves on as
    ``decision`` says and gets its attempt back; no attempt row, no usage event.

    False (and nothing written) when the claim no longer holds.
    """
    params = _next_state(decision, claim, utcnow(), requeue_after_s)
    params |= {"run_id": claim.run_id, "token": claim.token, "given_back": 1}
    return connection.execute(_MOVES[type(decision)], params).rowcount == 1


def _next_state(
    decision: Decision, claim: Claim, now: datetime, requeue_after_s: float
) -> dict[str, Any]:
    match decision:
        case Succeed(output=output, usage=usage):
            hop = claim.hop
            return {
                "output": output,
                "usage": usage.model_dump(),
                "provider": hop.provider,
                "model": hop.model,
                "credential_kind": hop.credential_kind,
                "credential_name": hop.credential_name,
                "finished_at": now,
            }
        case NextHop(hop=hop_index, delay_s=delay_s):
            # If the message is lost, the sweeper sends it again after this.
            lease = now + timedelta(seconds=delay_s + requeue_after_s)
            return {"hop_index": hop_index, "lease_expires_at": lease}
        case Fail(code=code, message=message, status_code=status_code):
            error = {"code": code, "message": message, "provider": claim.hop.provider}
            return {"error": error | {"status_code": status_code}, "finished_at": now}
    raise TypeError(decision)


def _usage_event(outcome: Outcome, attempt_id: int, now: datetime) -> dict[str, Any]:
    attempt = outcome.attempt
    usage = attempt.usage or {}
    return {
        "attempt_id": attempt_id,
        "tenant_id": outcome.claim.tenant_id,
        "run_id": attempt.run_id,
        "app": outcome.claim.app,
        "provider": attempt.provider,
        "model": attempt.model,
        "credential_kind": attempt.credential_kind,
        "input_tokens": usage.get("input_tokens") or 0,
        "output_tokens": usage.get("output_tokens") or 0,
        "units": usage.get("units") or 0,
        "latency_ms": attempt.latency_ms,
        "outcome": attempt.outcome,
        "cost_usd": attempt.cost_usd,
        "billed_to": "tenant_cloud" if attempt.credential_kind == "byok" else "platform",
        "created_at": now,
    }


# -- provider jobs ---------------------------------------------------------------------------

_PARK = (
    update(RUNS)
    .where(_HELD)
    .values(pending_job=_bind("pending_job"), claim_token=null(), lease_expires_at=_LEASE)
)


def park(
    connection: Connection, claim: Claim, job: dict[str, Any], poll_at: datetime, grace_s: float
) -> bool:
    """The attempt waits on ``job`` at its provider: store the job on the run and let the claim
    go (the run stays ``running``) until its poll at ``poll_at``; nothing is recorded yet.

    False (and nothing written) when the claim no longer holds.
    """
    params = {"run_id": claim.run_id, "token": claim.token, "pending_job": job}
    lease = poll_at + timedelta(seconds=grace_s)
    return connection.execute(_PARK, params | {"lease": lease}).rowcount == 1


def drop_canceled_job(connection: Connection, run_id: str) -> CanceledJob | None:
    """A canceled run's provider job, taken off the run once: only one caller gets it (and
    cancels it at the provider). None when the run is not canceled or holds no job."""
    holding = (_RUN.id == run_id, _RUN.status == "canceled", _RUN.pending_job.is_not(None))
    row = connection.execute(
        select(_RUN.tenant_id, _RUN.chain, _RUN.hop_index, _RUN.pending_job).where(*holding)
    ).first()
    if row is None:
        return None
    dropped = connection.execute(update(RUNS).where(*holding).values(pending_job=null()))
    if dropped.rowcount != 1:
        return None
    tenant_id, chain, hop_index, job = row
    return CanceledJob(run_id, tenant_id, Hop.model_validate(chain[hop_index]), dict(job or {}))


# -- the API's cancel, and the sweeper -------------------------------------------------------


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
    this_run = (_RUN.id == run_id, _RUN.tenant_id == tenant_id)
    result = session.connection().execute(
        update(RUNS)
        .where(*this_run, _RUN.status.in_(("queued", "running")))
        .values(
            status="canceled",
            claim_token=null(),
            lease_expires_at=case((_RUN.pending_job.is_(None), null()), else_=job_kept),
            finished_at=now,
            error={"code": "canceled", "message": "canceled by request"},
        )
    )
    if result.rowcount == 1:
        return "canceled", True
    status = session.connection().execute(select(_RUN.status).where(*this_run)).scalar()
    return status, False


_RENEW = update(RUNS).where(_pairs(_RUN.claim_token, "tokens")).values(lease_expires_at=_LEASE)
#: Runs renewed per statement: three parameters each, well under every driver's limit
#: (Postgres: 65,535 in one statement) however many calls a process holds.
RENEW_CHUNK = 5000


def renew_leases(connection: Connection, tokens: dict[str, str], lease_s: float) -> int:
    """Extend the leases of the runs a live worker holds (run id -> claim token)."""
    lease = utcnow() + timedelta(seconds=lease_s)
    held = list(tokens.items())
    renewed = 0
    for start in range(0, len(held), RENEW_CHUNK):
        chunk = held[start : start + RENEW_CHUNK]
        params = _pair_params("tokens", chunk) | {"lease": lease}
        renewed += connection.execute(_RENEW, params).rowcount
    return renewed


def sweep(
    connection: Connection, requeue_after_s: float, limit: int = 500
) -> list[tuple[str, int, str]]:
    """Take back runs whose lease lapsed (dead worker) or whose message was lost.

    Returns (run id, hop index, provider) for each run this call took; the caller enqueues
    them. Each take is itself conditional, so concurrent sweepers never both take a run.
    Parked runs are ``sweep_jobs``'s.
    """
    stale = (_RUN.status.in_(("queued", "running")), _RUN.pending_job.is_(None))
    requeued = {"status": "queued", "claim_token": null()}
    return _sweep(connection, stale, requeued, requeue_after_s, limit)


def sweep_jobs(
    connection: Connection, grace_s: float, limit: int = 500
) -> list[tuple[str, int, str]]:
    """Take back parked runs whose poll is overdue (a lost message, a dead poller), and
    canceled runs whose job was not given up yet: (run id, hop index, provider) for each, to
    send a poll message to (never a hop message: that would submit the job again). A taken
    run's poll is due at once; if that message is lost too, the next sweep after ``grace_s``
    takes it again."""
    stale = (_RUN.status.in_(("running", "canceled")), _RUN.pending_job.is_not(None))
    return _sweep(connection, stale, {"claim_token": null()}, grace_s, limit)


def _sweep(
    connection: Connection,
    stale: tuple[ColumnElement[bool], ...],
    values: dict[str, Any],
    lease_s: float,
    limit: int,
) -> list[tuple[str, int, str]]:
    now = utcnow()
    lapsed = _RUN.lease_expires_at < now
    found = connection.execute(
        select(_RUN.id, _RUN.status, _RUN.hop_index, _RUN.chain).where(*stale, lapsed).limit(limit)
    ).all()
    taken = []
    for run_id, status, hop_index, chain in found:
        result = connection.execute(
            update(RUNS)
            .where(_RUN.id == run_id, _RUN.status == status, lapsed, *stale)
            .values(**values, lease_expires_at=now + timedelta(seconds=lease_s))
        )
        if result.rowcount == 1:
            taken.append((run_id, hop_index, chain[hop_index]["provider"]))
    return taken
