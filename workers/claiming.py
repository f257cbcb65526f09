"""Claiming a batch of runs and starting their calls: one step of the store writer's cycle.

For the runs the worker threads asked for (``Ask``: a hop message each):

1. claim them all in one transaction (``lifecycle.claim_runs``), reading the credential of each
   claimed hop there when this process does not keep it yet (``Credentials``);
2. read the cooling state of every claimed chain in one Redis round trip; a run whose hop is
   cooling down is passed over: its claim is released without an attempt and it moves on as
   ``fallback.skip`` says;
3. start the calls of the others on the event loop, all at once, and announce them
   (``running``, sent with the cycle's other events);
4. answer every ask: True when its run's call started (the slot its thread took now belongs
   to the call's task), False when there was nothing to do (a duplicate or stale message), or
   the store's error, which dramatiq retries.
"""

from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

import redis
import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.cooldowns import Cooldowns
from dispatcher.db import utcnow
from dispatcher.routing import Cooling, cooling_until
from dispatcher.store import lifecycle
from dispatcher.store.lifecycle import Claim
from dispatcher.writers import writing
from workers import announce
from workers.announce import Outbox
from workers.credentials import Credentials, Loaded
from workers.fallback import skip
from workers.runtime import Runtime

log = structlog.get_logger(__name__)

Start = Callable[[Claim, Loaded], Coroutine[Any, Any, None]]


@dataclass
class Ask:
    """A worker thread's hop message, waiting for its answer."""

    run_id: str
    hop_index: int
    #: A client waits on the run (its message says so).
    waited: bool = False
    answer: Future[bool] = field(default_factory=Future)

    @property
    def key(self) -> tuple[str, int]:
        return self.run_id, self.hop_index


@dataclass
class Claimer:
    engine: Engine
    runtime: Runtime
    credentials: Credentials
    cooldowns: Cooldowns
    start: Start
    lease_s: float
    requeue_after_s: float

    def claim(self, asks: Sequence[Ask], outbox: Outbox) -> None:
        """Claim the asked runs and start their calls (see the module's docstring)."""
        try:
            claims, loaded = self._take(asks)
        except SQLAlchemyError as exc:
            for ask in asks:
                ask.answer.set_exception(exc)
            return
        started: set[tuple[str, int]] = set()
        try:
            self._start(claims, loaded, outbox, started)
        finally:  # every ask is answered, even if a bug cut the batch short
            for ask in asks:  # a duplicate message of a run started here gets False
                ask.answer.set_result(ask.key in started)
                started.discard(ask.key)

    def _take(self, asks: Sequence[Ask]) -> tuple[list[Claim], list[Loaded]]:
        keys = list(dict.fromkeys(ask.key for ask in asks))
        with writing(self.engine) as connection:
            claims = lifecycle.claim_runs(connection, keys, self.lease_s)
            load = self.credentials.load
            loaded = [load(connection, claim.tenant_id, claim.hop) for claim in claims]
        waited = {ask.key for ask in asks if ask.waited}
        if waited:
            claims = [
                replace(claim, waited=True) if (claim.run_id, claim.hop_index) in waited else claim
                for claim in claims
            ]
        return claims, loaded

    def _start(
        self,
        claims: list[Claim],
        loaded: list[Loaded],
        outbox: Outbox,
        started: set[tuple[str, int]],
    ) -> None:
        """Start the calls of the claims whose hop is not cooling down, all in one hop to the
        loop (adding their keys to ``started``); pass the others over."""
        calls = []
        now = utcnow()
        try:
            cooling = self._cooling(claims)
            for claim, credential, chain in zip(claims, loaded, cooling, strict=True):
                if cooling_until(chain, claim.hop_index, now) is not None:
                    self._pass_over(claim, chain, outbox)
                    continue
                self.runtime.held[claim.run_id] = claim.token
                calls.append(self.start(claim, credential))
                started.add((claim.run_id, claim.hop_index))
                outbox.announce(claim, [announce.running(claim)])
        finally:
            self.runtime.spawn_all(calls)

    def _pass_over(self, claim: Claim, cooling: Cooling, outbox: Outbox) -> None:
        """Release the claim on a cooling hop without an attempt, and move the run on. If the
        store fails, the claim's lease lapses and the sweeper takes the run back."""
        decision = skip(claim, cooling)
        try:
            with writing(self.engine) as connection:
                released = lifecycle.release(
                    connection, claim, decision, requeue_after_s=self.requeue_after_s
                )
        except SQLAlchemyError:
            log.exception("a cooling hop's claim not released", run_id=claim.run_id)
            return
        if released:
            outbox.move(claim, decision, None)
            log.info("hop cooling down: passed over", run_id=claim.run_id, hop=claim.hop_index)

    def _cooling(self, claims: list[Claim]) -> list[Cooling]:
        """Each claim's chain's cooling state, in one round trip (each hop's key once). If Redis
        does not answer, nothing is cooling: the providers' own 429s still are."""
        try:
            return self.cooldowns.read_many([(c.tenant_id, c.chain) for c in claims])
        except redis.RedisError:
            log.warning("cooldowns unreadable: no hop counts as cooling down", exc_info=True)
            return [() for _ in claims]
