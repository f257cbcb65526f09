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
"""

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime

import redis
import structlog
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine
from sqlmodel import Session

from dispatcher.cooldowns import Cooldowns
from dispatcher.db import utcnow
from dispatcher.events import RunEvents
from dispatcher.models import Attempt
from dispatcher.pricing import PriceTable, load_prices
from dispatcher.queue import enqueue_hop
from dispatcher.routing import Cooling, cooling_until
from dispatcher.settings import Settings
from dispatcher.store import lifecycle
from dispatcher.store.lifecycle import Claim, Decision, Fail, NextHop
from dispatcher.vault import Keyring
from schemas.credentials import CredentialSecret
from schemas.inference import InferenceRequest, InferenceResult
from workers import announce
from workers.credentials import Loaded, load_for_hop, note_health
from workers.fallback import decide, skip
from workers.providers import Adapter
from workers.providers.errors import ProviderError
from workers.runtime import Runtime

log = structlog.get_logger(__name__)

Outcome = InferenceResult | ProviderError


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
        """The actor body: runs on a dramatiq worker thread and returns once the call is started."""
        self.runtime.slots.acquire()
        try:
            claim, credential = self._claim(run_id, hop_index)
        except BaseException:
            self.runtime.slots.release()
            raise
        if claim is None:
            self.runtime.slots.release()
            log.debug(
                "message skipped: run is not claimable at this hop", run_id=run_id, hop=hop_index
            )
            return
        self.runtime.held[claim.run_id] = claim.token
        event, data = announce.running(claim)
        self.events.publish(claim.run_id, claim.tenant_id, event, **data)
        self.runtime.spawn(self.execute(claim, credential))

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
        hop = claim.hop
        context = {"run_id": claim.run_id, "tenant": claim.tenant_id, "provider": hop.provider}
        with structlog.contextvars.bound_contextvars(
            **context, hop=claim.hop_index, attempt=claim.attempt
        ):
            try:
                started_at, started = utcnow(), time.perf_counter()
                if isinstance(credential, ProviderError):
                    outcome: Outcome = credential
                else:
                    outcome = await self._call(claim, credential)
                attempt = _attempt(
                    claim, outcome, started_at, (time.perf_counter() - started) * 1000
                )
                if isinstance(outcome, InferenceResult):
                    attempt.cost_usd = self.prices.cost(hop.provider, hop.model, outcome.usage)
                await self.runtime.in_store_thread(self._finish, claim, attempt, outcome)
            finally:
                self.runtime.held.pop(claim.run_id, None)

    async def _call(self, claim: Claim, credential: CredentialSecret | None) -> Outcome:
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
            return await asyncio.wait_for(
                adapter.invoke(request, credential), timeout=hop.timeout_s
            )
        except ProviderError as error:
            return error
        except TimeoutError:
            return ProviderError("timeout", f"no answer within {hop.timeout_s:g}s")
        except Exception as exc:  # an adapter bug must not strand the run: fail this hop, loudly
            log.exception("adapter raised an unexpected error")
            return ProviderError("provider_error", f"adapter error: {type(exc).__name__}")

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


def _attempt(claim: Claim, outcome: Outcome, started_at: datetime, latency_ms: float) -> Attempt:
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
