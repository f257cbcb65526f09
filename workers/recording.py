"""Recording a batch of finished attempts: one step of the store writer's cycle.

For the attempts whose calls ended since the last cycle (``Finished``):

1. decide where each run goes (``fallback.decide``; a failure first starts the cooldown it
   earned and reads its chain's cooling state), once: a retried write keeps its decision;
2. write them all in one transaction (group commit): each run's next state, if its claim still
   holds, its attempt row and usage event, and its credential's health;
3. add to the cycle's ``Outbox`` what they announce: their events (a run that ended at its
   only attempt with its whole body, for waiting clients), next hops, and the tenants whose
   credential health changed; the writer sends it after the commit;
4. wake each attempt's task, which then ends and gives its slot back.

Outcomes the store refused are tried again in the next cycles, with those that finished
meanwhile (every write is conditional, so a repeat is harmless), while the runs' leases are
renewed; after ``MAX_TRIES`` refusals in a row they are dropped, their leases lapse, and the
sweeper sends the runs again.
"""

import asyncio
from dataclasses import dataclass, field
from datetime import datetime

import redis
import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.cooldowns import Cooldowns
from dispatcher.db import utcnow
from dispatcher.routing import Cooling
from dispatcher.store import lifecycle
from dispatcher.store.lifecycle import AttemptRow, Claim, Outcome
from dispatcher.writers import writing
from schemas.inference import InferenceResult
from workers.announce import Outbox
from workers.credentials import note_health
from workers.fallback import decide
from workers.providers.errors import ProviderError
from workers.runtime import Runtime

log = structlog.get_logger(__name__)

#: Refusals in a row after which the outcomes waiting are dropped (and their runs swept).
MAX_TRIES = 3


@dataclass(frozen=True)
class Finished:
    """An attempt whose call ended: its row, what the provider answered, and the future its
    task waits on until the attempt is recorded (or dropped)."""

    claim: Claim
    attempt: AttemptRow
    result: InferenceResult | ProviderError
    recorded: asyncio.Future[None]


@dataclass
class Pending:
    """Decided outcomes the store has not taken yet (with their tasks' futures), and the
    cycles they were tried in."""

    outcomes: list[Outcome] = field(default_factory=list)
    waiting: list[asyncio.Future[None]] = field(default_factory=list)
    tries: int = 0

    def add(self, outcome: Outcome, recorded: asyncio.Future[None]) -> None:
        self.outcomes.append(outcome)
        self.waiting.append(recorded)


@dataclass
class Recorder:
    engine: Engine
    runtime: Runtime
    cooldowns: Cooldowns
    requeue_after_s: float

    def decide(self, finished: Finished) -> Outcome:
        """Where the run goes after ``finished``; a failure first starts the cooldown it earned
        and reads its chain's cooling state (nothing cools if Redis does not answer: the
        providers' own 429s still do)."""
        claim, result = finished.claim, finished.result
        cooling: Cooling = ()
        if isinstance(result, ProviderError):
            try:
                cooling = self.cooldowns.note(
                    claim.tenant_id, claim.chain, claim.hop_index, result.error_class,
                    result.retry_after_s,
                )  # fmt: skip
            except redis.RedisError:
                log.warning("cooldowns unreadable: no hop counts as cooling down", exc_info=True)
        return Outcome(claim, finished.attempt, decide(claim, result, cooling))

    def record(self, pending: Pending, outbox: Outbox) -> Pending | None:
        """Write ``pending`` in one transaction (see the module's docstring); what is left to
        try again in a later cycle, or None."""
        outcomes, now = pending.outcomes, utcnow()
        try:
            recorded, changed = self._write(outcomes, now)
        except SQLAlchemyError:
            pending.tries += 1
            if pending.tries < MAX_TRIES:
                log.warning("outcomes not recorded; trying again", count=len(outcomes))
                return pending
            log.exception("outcomes dropped: the store refused them", count=len(outcomes))
            self.runtime.resolve(pending.waiting)
            return None
        outbox.owners.update(changed)
        for outcome, ok in zip(outcomes, recorded, strict=True):
            if ok:
                self._announce(outcome, outbox, now)
            else:
                log.warning(
                    "outcome dropped: the claim was lost (lease lapsed or run ended)",
                    run_id=outcome.claim.run_id,
                )
        self.runtime.resolve(pending.waiting)
        return None

    def _write(self, outcomes: list[Outcome], now: datetime) -> tuple[list[bool], set[str]]:
        """Record the outcomes at ``now`` and their credentials' health: which were recorded,
        and the tenants whose credential health changed."""
        with writing(self.engine) as connection:
            recorded = lifecycle.record(
                connection, outcomes, requeue_after_s=self.requeue_after_s, now=now
            )
            written = zip(outcomes, recorded, strict=True)
            attempts = [(o.claim.tenant_id, o.claim.hop, o.attempt) for o, ok in written if ok]
            changed = note_health(connection, attempts)
        return recorded, changed

    def _announce(self, outcome: Outcome, outbox: Outbox, now: datetime) -> None:
        claim, attempt, decision = outcome.claim, outcome.attempt, outcome.decision
        outbox.move(claim, decision, attempt, lifecycle.ended_run(outcome, now))
        log.info(
            "attempt recorded",
            run_id=claim.run_id,
            tenant=claim.tenant_id,
            provider=attempt.provider,
            hop=claim.hop_index,
            attempt=claim.attempt,
            outcome=attempt.outcome,
            error_class=attempt.error_class,
            latency_ms=round(attempt.latency_ms, 2),
            next=type(decision).__name__,
        )
