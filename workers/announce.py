"""What a worker's store writes announce, and the sending of it once they are committed.

``running`` and ``outcome_events`` say which run events a claim and a recorded attempt mean;
an ``Outbox`` collects them for a batch of writes, with the next-hop messages, what the
metrics count (attempts, runs ended) and the owners whose configuration changed (a
credential's health), and ``send`` delivers them after the commit: the messages, then every
event and count in one round trip, then the owners' changes.
"""

from dataclasses import dataclass, field
from typing import Any

import redis
import structlog
from dramatiq.brokers.redis import RedisBroker

from dispatcher.changes import ConfigChanges
from dispatcher.events import EventType, RunEvent, RunEvents
from dispatcher.metrics import count_attempt, count_run_finished
from dispatcher.queue import enqueue_hop
from dispatcher.store.lifecycle import AttemptRow, Claim, Decision, Fail, NextHop, Succeed
from schemas.runs import RunPublic
from schemas.webhooks import TERMINAL_EVENTS

log = structlog.get_logger(__name__)

Event = tuple[EventType, dict[str, Any]]


def running(claim: Claim) -> Event:
    hop = claim.hop
    return "running", {"attempt": claim.attempt, "hop": claim.hop_index, "provider": hop.provider}


def outcome_events(claim: Claim, attempt: AttemptRow | None, decision: Decision) -> list[Event]:
    """The events of a recorded attempt's outcome, or (``attempt`` None) of passing a hop over."""
    events: list[Event] = []
    if attempt is not None and attempt.outcome == "failed":
        events.append(("attempt_failed", _failure(attempt)))
    match decision:
        case Succeed():
            hop = claim.hop
            events.append(
                ("succeeded", {"provider": hop.provider, "credential_kind": hop.credential_kind})
            )
        case Fail(code=code, message=message):
            events.append(("failed", {"code": code, "message": message}))
        case NextHop(hop=hop_index, provider=provider, delay_s=delay_s):
            if hop_index != claim.hop_index:
                events.append(
                    (
                        "fell_back",
                        {"from_hop": claim.hop_index, "to_hop": hop_index, "provider": provider},
                    )
                )
            if delay_s > 0:
                events.append(("waiting", {"hop": hop_index, "delay_s": round(delay_s, 3)}))
    return events


def _failure(attempt: AttemptRow) -> dict[str, Any]:
    return {
        "attempt": attempt.number,
        "hop": attempt.hop,
        "provider": attempt.provider,
        "error_class": attempt.error_class,
        "status_code": attempt.status_code,
    }


@dataclass
class Outbox:
    """What a batch of committed store writes sends: next-hop messages, run events (in the
    order they were added), what the metrics count, and the owners whose configuration
    changed."""

    hops: list[tuple[str, NextHop]] = field(default_factory=list)
    events: list[RunEvent] = field(default_factory=list)
    attempts: list[tuple[AttemptRow, str | None]] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    owners: set[str] = field(default_factory=set)

    def announce(self, claim: Claim, events: list[Event], run: RunPublic | None = None) -> None:
        """Add the claimed run's ``events``; ``run``, the run they ended, goes with the
        terminal one to waiting clients."""
        body = None if run is None else run.__pydantic_serializer__.to_json(run)
        self.events.extend(
            RunEvent(claim.run_id, claim.tenant_id, t, d, body if t in TERMINAL_EVENTS else None)
            for t, d in events
        )

    def move(
        self,
        claim: Claim,
        decision: Decision,
        attempt: AttemptRow | None,
        run: RunPublic | None = None,
    ) -> None:
        """The run moved as ``decision`` says after ``attempt`` (None: its hop was passed
        over): its events (with ``run`` when that is the run they ended), its next hop's
        message (if any), and its counts."""
        if isinstance(decision, NextHop):
            self.hops.append((claim.run_id, decision))
        self.announce(claim, outcome_events(claim, attempt, decision), run)
        status = None if isinstance(decision, NextHop) else _STATUS[type(decision)]
        if attempt is not None:
            self.attempts.append((attempt, status))
        elif status is not None:
            self.ended.append(status)

    def send(self, broker: RedisBroker, events: RunEvents, changes: ConfigChanges) -> None:
        """Deliver everything; Redis failing is logged, not raised: the writes are committed,
        and the sweeper sends a run whose message was lost again."""
        for run_id, hop in self.hops:
            try:
                enqueue_hop(broker, run_id, hop.hop, hop.provider, hop.delay_s)
            except redis.RedisError:
                log.warning("next hop not enqueued; the sweeper will", run_id=run_id, exc_info=True)
        try:
            events.publish_many(self.events, also=lambda pipe: self._count(pipe, events.namespace))
        except redis.RedisError:
            log.warning("run events not published", count=len(self.events), exc_info=True)
        for owner in self.owners:
            changes.announce(owner)

    def _count(self, pipe: redis.Redis, namespace: str) -> None:
        for attempt, status in self.attempts:
            count_attempt(
                pipe, namespace, provider=attempt.provider, outcome=attempt.outcome,
                error_class=attempt.error_class, latency_ms=attempt.latency_ms, run_status=status,
            )  # fmt: skip
        for status in self.ended:
            count_run_finished(pipe, namespace, status)


_STATUS = {Succeed: "succeeded", Fail: "failed"}
