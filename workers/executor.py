"""The hop executor: claim a run, call its hop's provider, record the outcome, move it on.

dramatiq worker thread          event loop                     store thread
----------------------          ----------                     ------------
take a slot, claim the run  ->  adapter.invoke(...)        ->  start the hop's cooldown (if
(a stale message: no-op;        (holds no thread)              it earned one), read the
 a hop cooling down: passed                                    chain's, decide; record attempt
 over, no attempt made)                                        + usage + next state, once;
                                                               enqueue the next hop

A run queued for a hop before that hop's cooldown began finds it cooling when claimed: the
claim is released in the same transaction (``lifecycle.release``: no attempt row, the attempt
count given back) and the run goes where ``fallback.skip`` says, like any other move.

A provider whose jobs take minutes (fal) answers a submit with ``FalPending``. The attempt
then parks (``lifecycle.park``: the job stored on the run, the claim let go, a delayed
``poll_hop`` message sent) and holds nothing while it waits: no slot, thread or loop task.
``poll`` takes the run back when the poll is due (``lifecycle.claim_job``), polls once, and
parks again, or records the attempt like any other, the job kept on its row. A job has a
bound (``job_bound``); past it, it is canceled at the provider and the attempt is a
``timeout``. A canceled run's job is canceled at the provider by the poll message the cancel
sends: ``lifecycle.drop_canceled_job`` gives it to one poller only.
"""

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
import structlog
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from dispatcher.cooldowns import Cooldowns
from dispatcher.db import utcnow
from dispatcher.events import RunEvents
from dispatcher.models import Attempt
from dispatcher.pricing import PriceTable, load_prices
from dispatcher.queue import enqueue_hop, enqueue_poll
from dispatcher.routing import Cooling, cooling_until
from dispatcher.settings import Settings
from dispatcher.store import lifecycle
from dispatcher.store.lifecycle import CanceledJob, Claim, Decision, Fail, NextHop
from dispatcher.vault import Keyring
from schemas.credentials import CredentialSecret
from schemas.inference import InferenceRequest, InferenceResult
from workers import announce
from workers.credentials import Loaded, load_for_hop, note_health
from workers.fallback import decide, skip
from workers.providers import Adapter
from workers.providers.errors import ProviderError
from workers.providers.fal import FalAdapter, FalJob, FalPending
from workers.runtime import Runtime

log = structlog.get_logger(__name__)

Outcome = InferenceResult | ProviderError
Work = Coroutine[Any, Any, None]
#: How long a provider's job may take when its run has no deadline.
MAX_JOB_S = 3600.0


@dataclass
class HopExecutor:
    settings: Settings
    engine: Engine
    broker: RedisBroker
    runtime: Runtime
    adapters: dict[str, Adapter]
    keyring: Keyring
    prices: PriceTable = field(default_factory=load_prices)
    events: RunEvents = field(init=False)
    cooldowns: Cooldowns = field(init=False)

    def __post_init__(self) -> None:
        self.events = RunEvents(self.broker.client, self.settings.redis_namespace)
        self.cooldowns = Cooldowns(self.broker.client, self.settings.redis_namespace)

    def handle(self, run_id: str, hop_index: int) -> None:
        """The hop actor's body: runs on a dramatiq worker thread and returns once the call is
        started."""
        self._start(self._claim_hop, run_id, hop_index)

    def poll(self, run_id: str, hop_index: int) -> None:
        """The poll actor's body: poll the job the run waits on, once; or, the run canceled,
        cancel the job at the provider."""
        self._start(self._take_job, run_id, hop_index)

    def _start(self, take: Callable[[str, int], Work | None], run_id: str, hop_index: int) -> None:
        """Take a slot and start on the loop what ``take`` gives; nothing to do: give it back."""
        self.runtime.slots.acquire()
        try:
            work = take(run_id, hop_index)
        except BaseException:
            self.runtime.slots.release()
            raise
        if work is None:
            self.runtime.slots.release()
            log.debug("message skipped: nothing to do for the run at this hop", hop=hop_index)
            return
        self.runtime.spawn(work)

    def _claim_hop(self, run_id: str, hop_index: int) -> Work | None:
        claim, credential = self._claim(run_id, hop_index)
        if claim is None:
            return None
        self.runtime.held[claim.run_id] = claim.token
        event, data = announce.running(claim)
        try:
            self.events.publish(claim.run_id, claim.tenant_id, event, **data)
        except redis.RedisError:  # the call goes on: its outcome is what counts
            log.warning("running event not published", exc_info=True)
        return self.execute(claim, credential)

    def _take_job(self, run_id: str, hop_index: int) -> Work | None:
        """A canceled run's job to cancel at the provider, else the parked run's job to poll
        (once its poll is due); None when there is neither."""
        with Session(self.engine) as session:
            dropped = lifecycle.drop_canceled_job(session, run_id)
            if dropped is not None:
                credential = load_for_hop(session, self.keyring, dropped.tenant_id, dropped.hop)
                session.commit()
                return self._give_up(dropped, credential)
            lease_s = self.settings.lease_s
            claim = lifecycle.claim_job(session, run_id, hop_index, lease_s, grace_s=lease_s)
            if claim is None:
                return None
            credential = load_for_hop(session, self.keyring, claim.tenant_id, claim.hop)
            session.commit()
        self.runtime.held[claim.run_id] = claim.token
        return self.execute(claim, credential)

    def _claim(self, run_id: str, hop_index: int) -> tuple[Claim | None, Loaded]:
        """The claim and its credential; None when there is nothing to call: the run is not
        claimable at this hop, or the hop is cooling down (the run was moved on)."""
        with Session(self.engine) as session:
            claim = lifecycle.claim_run(session, run_id, hop_index, self.settings.lease_s)
            if claim is None:
                return None, None
            cooling = self._cooling(claim)
            if cooling_until(cooling, claim.hop_index, utcnow()) is not None:
                self._pass_over(session, claim, skip(claim, cooling))
                return None, None
            credential = load_for_hop(session, self.keyring, claim.tenant_id, claim.hop)
            session.commit()
        return claim, credential

    def _pass_over(self, session: Session, claim: Claim, decision: NextHop | Fail) -> None:
        """Release the claim on a cooling hop without an attempt, and move the run on."""
        released = lifecycle.release(
            session, claim, decision, requeue_after_s=self.settings.requeue_after_s
        )
        session.commit()
        if released:
            self._follow(claim, decision, announce.outcome_events(claim, None, decision))
            log.info("hop cooling down: passed over", run_id=claim.run_id, hop=claim.hop_index)

    def _cooling(self, claim: Claim, error: ProviderError | None = None) -> Cooling:
        """Start the cooldown ``error`` earned (if it earned one), then read the chain's cooling
        state. If Redis does not answer, nothing is cooling: the providers' own 429s still are."""
        try:
            if error is None:
                return self.cooldowns.read(claim.tenant_id, claim.chain)
            return self.cooldowns.note(
                claim.tenant_id, claim.chain, claim.hop_index, error.error_class,
                error.retry_after_s,
            )  # fmt: skip
        except redis.RedisError:
            log.warning("cooldowns unreadable: no hop counts as cooling down", exc_info=True)
            return ()

    async def execute(self, claim: Claim, credential: Loaded) -> None:
        """One step of the claimed attempt: the call (or, for a parked attempt, one poll of
        its job), then the attempt recorded, or parked until the next poll."""
        hop = claim.hop
        context = {"run_id": claim.run_id, "tenant": claim.tenant_id, "provider": hop.provider}
        with structlog.contextvars.bound_contextvars(
            **context, hop=claim.hop_index, attempt=claim.attempt
        ):
            try:
                started_at = submitted_at(claim.job) or utcnow()
                if isinstance(credential, ProviderError):
                    called: Outcome | FalPending = credential
                else:
                    called = await self._call(claim, credential)
                if not isinstance(called, FalPending):
                    await self._conclude(claim, called, started_at, claim.job)
                    return
                job = job_record(called, started_at)
                timed_out = await self._wait(claim, credential, job, next_poll_at(claim, called))
                if timed_out is not None:
                    await self._conclude(claim, timed_out, started_at, job)
            finally:
                if self.runtime.held.get(claim.run_id) == claim.token:
                    self.runtime.held.pop(claim.run_id, None)

    async def _conclude(
        self, claim: Claim, outcome: Outcome, started_at: datetime, job: dict[str, Any] | None
    ) -> None:
        hop = claim.hop
        latency_ms = (utcnow() - started_at).total_seconds() * 1000
        attempt = _attempt(claim, outcome, started_at, latency_ms, finished_job(job, outcome))
        if isinstance(outcome, InferenceResult):
            attempt.cost_usd = self.prices.cost(hop.provider, hop.model, outcome.usage)
        await self.runtime.in_store_thread(self._finish, claim, attempt, outcome)

    async def _call(
        self, claim: Claim, credential: CredentialSecret | None
    ) -> Outcome | FalPending:
        """The provider call: submit or invoke, or poll the job a parked attempt waits on."""
        hop = claim.hop
        request = InferenceRequest(
            app=claim.app,
            model=hop.model or claim.app,
            input=claim.input,
            region=hop.region,
            timeout_s=hop.timeout_s,
        )
        adapter = self.adapters[hop.provider]
        try:
            if claim.job is None:
                call = adapter.invoke(request, credential)
            else:
                call = _with_jobs(adapter).poll(FalJob.from_dict(claim.job), credential)
            return await asyncio.wait_for(call, timeout=hop.timeout_s)
        except FalPending as pending:
            return pending
        except ProviderError as error:
            return error
        except TimeoutError:
            return ProviderError("timeout", f"no answer within {hop.timeout_s:g}s")
        except Exception as exc:  # an adapter bug must not strand the run: fail this hop, loudly
            log.exception("adapter raised an unexpected error")
            return ProviderError("provider_error", f"adapter error: {type(exc).__name__}")

    async def _wait(
        self, claim: Claim, credential: Loaded, job: dict[str, Any], poll_at: datetime | None
    ) -> ProviderError | None:
        """Park the attempt until its poll at ``poll_at`` (None: the job's bound has passed;
        it is canceled at the provider and the attempt is a ``timeout``, returned to record).
        A job just submitted that cannot be parked (its run was canceled or taken back by the
        sweeper meanwhile, or the store failed) is canceled at the provider: nobody polls it."""
        if poll_at is None:
            await self._cancel_at_provider(claim.hop.provider, job, credential)
            bound = job_bound(claim, submitted_at(job) or utcnow())
            return ProviderError("timeout", f"the job was not done by {bound.isoformat()}")
        job = job | {"next_poll_at": poll_at.isoformat()}
        try:
            parked = await self.runtime.in_store_thread(self._park, claim, job, poll_at)
        except SQLAlchemyError:  # the run will be claimed again: a new job would be submitted
            log.exception("job not parked: the store failed")
            parked = False
        if not parked and claim.job is None:
            await self._cancel_at_provider(claim.hop.provider, job, credential)
        return None

    def _park(self, claim: Claim, job: dict[str, Any], poll_at: datetime) -> bool:
        with Session(self.engine) as session:
            parked = lifecycle.park(session, claim, job, poll_at, grace_s=self.settings.lease_s)
            session.commit()
        if not parked:
            log.warning("job not parked: the claim was lost (run canceled or taken back)")
            return False
        delay_s = max(0.0, (poll_at - utcnow()).total_seconds())
        try:
            enqueue_poll(self.broker, claim.run_id, claim.hop_index, claim.hop.provider, delay_s)
        except redis.RedisError:  # parked all the same: the sweeper sends the poll
            log.warning("poll message not sent; the sweeper will send it", exc_info=True)
        log.info(
            "waiting on the provider's job",
            request_id=job["request_id"],
            status=job["status"],
            poll_in_s=round(delay_s, 3),
        )
        return True

    async def _give_up(self, dropped: CanceledJob, credential: Loaded) -> None:
        provider = dropped.hop.provider
        with structlog.contextvars.bound_contextvars(
            run_id=dropped.run_id, tenant=dropped.tenant_id, provider=provider
        ):
            await self._cancel_at_provider(provider, dropped.job, credential)

    async def _cancel_at_provider(
        self, provider: str, job: dict[str, Any], credential: Loaded
    ) -> None:
        """Ask the provider to drop ``job``; a failure is logged (nothing else can be done)."""
        request_id = job.get("request_id")
        if credential is None or isinstance(credential, ProviderError):
            log.warning("job not canceled at the provider: no credential", request_id=request_id)
            return
        adapter = _with_jobs(self.adapters[provider])
        try:
            answer = await adapter.cancel(FalJob.from_dict(job), credential)
        except ProviderError as error:
            log.warning(
                "job not canceled at the provider",
                request_id=request_id,
                error_class=error.error_class,
                message=error.message,
            )
            return
        log.info("job canceled at the provider", request_id=request_id, answer=answer)

    def _finish(self, claim: Claim, attempt: Attempt, outcome: Outcome) -> None:
        error = outcome if isinstance(outcome, ProviderError) else None
        decision = decide(claim, outcome, self._cooling(claim, error) if error else ())
        with Session(self.engine, expire_on_commit=False) as session:
            recorded = lifecycle.record(
                session, claim, attempt, decision, requeue_after_s=self.settings.requeue_after_s
            )
            if recorded:
                note_health(session, claim.tenant_id, claim.hop, error)
            session.commit()
        if not recorded:
            log.warning("outcome dropped: the claim was lost (lease lapsed or run ended)")
            return
        self._follow(claim, decision, announce.outcome_events(claim, attempt, decision))
        log.info(
            "attempt recorded",
            outcome=attempt.outcome,
            error_class=attempt.error_class,
            latency_ms=round(attempt.latency_ms, 2),
            next=type(decision).__name__,
        )

    def _follow(self, claim: Claim, decision: Decision, events: list[announce.Event]) -> None:
        """After the commit: send the run to its next hop, and announce what happened."""
        if isinstance(decision, NextHop):
            enqueue_hop(
                self.broker, claim.run_id, decision.hop, decision.provider, decision.delay_s
            )
        for event, data in events:
            self.events.publish(claim.run_id, claim.tenant_id, event, **data)


def submitted_at(job: dict[str, Any] | None) -> datetime | None:
    """When the provider's job was submitted (the start of its attempt)."""
    return None if job is None else datetime.fromisoformat(job["submitted_at"])


def job_record(pending: FalPending, submitted: datetime) -> dict[str, Any]:
    """What a run stores (and shows) of the job its attempt waits on; JSON-safe, and what the
    next poll reads back with ``FalJob.from_dict``."""
    where = {"status": pending.status, "queue_position": pending.queue_position}
    return pending.job.as_dict() | where | {"submitted_at": submitted.isoformat()}


def finished_job(job: dict[str, Any] | None, outcome: Outcome) -> dict[str, Any] | None:
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


def _with_jobs(adapter: Adapter) -> FalAdapter:
    """The adapter of a provider whose jobs are polled (fal)."""
    if not isinstance(adapter, FalAdapter):
        raise TypeError(f"{type(adapter).__name__} has no jobs to poll or cancel")
    return adapter


def _attempt(
    claim: Claim,
    outcome: Outcome,
    started_at: datetime,
    latency_ms: float,
    job: dict[str, Any] | None = None,
) -> Attempt:
    hop = claim.hop
    attempt = Attempt(
        run_id=claim.run_id,
        number=claim.attempt,
        hop=claim.hop_index,
        provider=hop.provider,
        model=hop.model,
        credential_kind=hop.credential_kind,
        credential_name=hop.credential_name,
        outcome="succeeded",
        status_code=200,
        latency_ms=latency_ms,
        provider_job=job,
        started_at=started_at,
        finished_at=utcnow(),
    )
    if isinstance(outcome, ProviderError):
        attempt.outcome = "failed"
        attempt.status_code = outcome.status_code
        attempt.error_class = outcome.error_class
        attempt.message = outcome.message
        attempt.retry_after_s = outcome.retry_after_s
    else:
        attempt.usage = outcome.usage.model_dump()
    return attempt
