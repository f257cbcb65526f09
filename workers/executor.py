"""The hop executor: claim a run, call its hop's provider, record the outcome, move it on.

dramatiq worker thread        store writer (one thread)        event loop
----------------------        -------------------------        ----------
take a slot, hand the    ->   claim a batch of runs in one ->  one task per run:
message over and wait         transaction, start their         adapter.invoke(...) (holds no
(a stale message: no-op;      calls; a hop cooling down:       thread), then hand the outcome
 acked once answered)         passed over, no attempt    <-    to the writer and wait
                              record a batch of outcomes in
                              one transaction (attempt +  ->   the task ends: its slot is free
                              usage + next state, once
                              each); then announce it all
                              and enqueue next hops
                              (``workers.writer``)

A run queued for a hop before that hop's cooldown began finds it cooling when claimed: the
claim is released (``lifecycle.release``: no attempt row, the attempt count given back) and
the run goes where ``fallback.skip`` says, like any other move.

A provider whose jobs take minutes (fal) answers a submit with ``FalPending``. The attempt
then parks (``lifecycle.park``: the job stored on the run, the claim let go, a delayed
``poll_hop`` message sent) and holds nothing while it waits: no slot, thread or loop task.
``poll`` takes the run back when the poll is due (``lifecycle.claim_job``), polls once, and
parks again, or records the attempt like any other, the job kept on its row. A job has a
bound (``workers.jobs``); past it, it is canceled at the provider and the attempt is a
``timeout``. A canceled run's job is canceled at the provider by the poll message the cancel
sends: ``lifecycle.drop_canceled_job`` gives it to one poller only.

The hop's timeout (``asyncio.wait_for`` around the adapter's call) starts with the call's
task: a claimed run waits for nothing else in the process first (the writer starts a batch's
calls in one hop to the loop, right after their claim commits), and an outcome's recording is
not part of it.
"""

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
import structlog
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.changes import ConfigChanges
from dispatcher.cooldowns import Cooldowns
from dispatcher.db import utcnow
from dispatcher.events import RunEvents
from dispatcher.pricing import PriceTable, load_prices
from dispatcher.queue import enqueue_poll
from dispatcher.settings import Settings
from dispatcher.store import lifecycle
from dispatcher.store.lifecycle import AttemptRow, CanceledJob, Claim
from dispatcher.writers import writing
from schemas.credentials import CredentialSecret
from schemas.inference import InferenceRequest, InferenceResult
from workers.announce import Outbox
from workers.claiming import Claimer
from workers.credentials import Credentials, Loaded
from workers.jobs import finished_job, job_bound, job_record, next_poll_at, submitted_at
from workers.providers import Adapter
from workers.providers.errors import ProviderError
from workers.providers.fal import FalAdapter, FalJob, FalPending
from workers.recording import Finished, Recorder
from workers.runtime import Runtime
from workers.writer import StoreWriter

log = structlog.get_logger(__name__)

Outcome = InferenceResult | ProviderError
Work = Coroutine[Any, Any, None]


@dataclass
class HopExecutor:
    settings: Settings
    engine: Engine
    broker: RedisBroker
    runtime: Runtime
    adapters: dict[str, Adapter]
    credentials: Credentials
    changes: ConfigChanges
    prices: PriceTable = field(default_factory=load_prices)
    events: RunEvents = field(init=False)
    writer: StoreWriter = field(init=False)

    def __post_init__(self) -> None:
        self.events = RunEvents(self.broker.client, self.settings.redis_namespace)
        cooldowns = Cooldowns(self.broker.client, self.settings.redis_namespace)
        settings = self.settings
        claimer = Claimer(
            self.engine, self.runtime, self.credentials, cooldowns, self.execute,
            lease_s=settings.lease_s, requeue_after_s=settings.requeue_after_s,
        )  # fmt: skip
        recorder = Recorder(self.engine, self.runtime, cooldowns, settings.requeue_after_s)
        self.writer = StoreWriter(claimer, recorder, self._send)

    def _send(self, outbox: Outbox) -> None:
        outbox.send(self.broker, self.events, self.changes)

    def handle(self, run_id: str, hop_index: int, waited: bool = False) -> None:
        """The hop actor's body: runs on a dramatiq worker thread and returns once the run's
        call is started (or there is nothing to do). ``waited``: a client waits on the run."""
        self.runtime.slots.acquire()
        try:
            started = self.writer.claim(run_id, hop_index, waited)
        except BaseException:
            self.runtime.slots.release()
            raise
        if not started:
            self.runtime.slots.release()
            log.debug("message skipped: nothing to do for the run at this hop", hop=hop_index)

    def poll(self, run_id: str, hop_index: int) -> None:
        """The poll actor's body: poll the job the run waits on, once; or, the run canceled,
        cancel the job at the provider."""
        self.runtime.slots.acquire()
        try:
            work = self._take_job(run_id, hop_index)
        except BaseException:
            self.runtime.slots.release()
            raise
        if work is None:
            self.runtime.slots.release()
            log.debug("poll skipped: no job of the run to poll at this hop", hop=hop_index)
            return
        self.runtime.spawn(work)

    def _take_job(self, run_id: str, hop_index: int) -> Work | None:
        """A canceled run's job to cancel at the provider, else the parked run's job to poll
        (once its poll is due); None when there is neither."""
        load = self.credentials.load
        with writing(self.engine) as connection:
            dropped = lifecycle.drop_canceled_job(connection, run_id)
            if dropped is not None:
                return self._give_up(dropped, load(connection, dropped.tenant_id, dropped.hop))
            lease_s = self.settings.lease_s
            claim = lifecycle.claim_job(connection, run_id, hop_index, lease_s, grace_s=lease_s)
            if claim is None:
                return None
            credential = load(connection, claim.tenant_id, claim.hop)
        self.runtime.held[claim.run_id] = claim.token
        return self.execute(claim, credential)

    async def execute(self, claim: Claim, credential: Loaded) -> None:
        """One step of the claimed attempt: the call (or, for a parked attempt, one poll of
        its job), then the attempt recorded by the store writer, or parked until the next
        poll. The task ends (and gives its slot back) once that is done."""
        hop = claim.hop
        context = {"run_id": claim.run_id, "tenant": claim.tenant_id, "provider": hop.provider}
        with structlog.contextvars.bound_contextvars(
            **context, hop=claim.hop_index, attempt=claim.attempt
        ):
            try:
                started_at = submitted_at(claim.job) or utcnow()
                if isinstance(credential, ProviderError):
                    called: Outcome | FalPending | None = credential
                else:
                    called = await self._call(claim, credential)
                job = claim.job
                if isinstance(called, FalPending):
                    job = job_record(called, started_at)
                    called = await self._wait(claim, credential, job, next_poll_at(claim, called))
                if called is not None:
                    recorded = asyncio.get_running_loop().create_future()
                    self.writer.record(self._finished(claim, called, started_at, job, recorded))
                    await recorded
            finally:
                if self.runtime.held.get(claim.run_id) == claim.token:
                    self.runtime.held.pop(claim.run_id, None)

    def _finished(
        self,
        claim: Claim,
        outcome: Outcome,
        started_at: datetime,
        job: dict[str, Any] | None,
        recorded: asyncio.Future[None],
    ) -> Finished:
        now = utcnow()
        latency_ms = (now - started_at).total_seconds() * 1000
        hop = claim.hop
        attempt = AttemptRow(
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
            provider_job=finished_job(job, outcome),
            started_at=started_at,
            finished_at=now,
        )
        if isinstance(outcome, ProviderError):
            attempt.outcome = "failed"
            attempt.status_code = outcome.status_code
            attempt.error_class = outcome.error_class
            attempt.message = outcome.message
            attempt.retry_after_s = outcome.retry_after_s
        else:
            attempt.usage = outcome.usage.model_dump()
            attempt.cost_usd = self.prices.cost(hop.provider, hop.model, outcome.usage)
        return Finished(claim, attempt, outcome, recorded)

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
        with writing(self.engine) as connection:
            grace_s = self.settings.lease_s
            parked = lifecycle.park(connection, claim, job, poll_at, grace_s=grace_s)
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


def _with_jobs(adapter: Adapter) -> FalAdapter:
    """The adapter of a provider whose jobs are polled (fal)."""
    if not isinstance(adapter, FalAdapter):
        raise TypeError(f"{type(adapter).__name__} has no jobs to poll or cancel")
    return adapter
