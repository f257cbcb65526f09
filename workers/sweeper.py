"""Housekeeping every worker process does on a timer.

- renew the leases of the runs this process holds, so a live worker keeps them;
- sweep: take back runs whose lease lapsed (their worker died) or whose message was
  lost, and enqueue them again. Takes are conditional, so many sweepers are safe.
  A run waiting on a provider's job (fal) gets a poll message, never a hop message:
  that would submit the job a second time.
"""

import threading
import time

import redis
import structlog
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.queue import enqueue_hop, enqueue_poll
from dispatcher.settings import Settings
from dispatcher.store import lifecycle
from dispatcher.writers import writing

log = structlog.get_logger(__name__)


def renew_once(engine: Engine, held: dict[str, str], lease_s: float) -> int:
    with writing(engine) as connection:
        return lifecycle.renew_leases(connection, dict(held), lease_s)


def sweep_once(
    engine: Engine, broker: RedisBroker, requeue_after_s: float, grace_s: float = 30.0
) -> int:
    """One sweep: hop messages for lapsed runs, poll messages for overdue jobs (their poll
    due for ``grace_s`` already). Returns how many runs were taken back."""
    with writing(engine) as connection:
        taken = lifecycle.sweep(connection, requeue_after_s)
        polled = lifecycle.sweep_jobs(connection, grace_s)
    for run_id, hop_index, provider in taken:
        log.warning(
            "run taken back by the sweeper", run_id=run_id, hop=hop_index, provider=provider
        )
        enqueue_hop(broker, run_id, hop_index, provider)
    for run_id, hop_index, provider in polled:
        log.warning("job poll sent by the sweeper", run_id=run_id, hop=hop_index, provider=provider)
        enqueue_poll(broker, run_id, hop_index, provider)
    return len(taken) + len(polled)


class Housekeeper(threading.Thread):
    def __init__(
        self, settings: Settings, engine: Engine, broker: RedisBroker, held: dict[str, str]
    ) -> None:
        super().__init__(name="housekeeper", daemon=True)
        self.settings = settings
        self.engine = engine
        self.broker = broker
        self.held = held
        self.stopped = threading.Event()

    def run(self) -> None:
        renew_due = sweep_due = time.monotonic()
        while not self.stopped.is_set():
            now = time.monotonic()
            try:
                if now >= renew_due:
                    renew_due = now + self.settings.lease_renew_s
                    renew_once(self.engine, self.held, self.settings.lease_s)
                if now >= sweep_due:
                    sweep_due = now + self.settings.sweep_interval_s
                    settings = self.settings
                    sweep_once(self.engine, self.broker, settings.requeue_after_s, settings.lease_s)
            except (SQLAlchemyError, redis.RedisError) as exc:
                log.error("housekeeping failed; trying again next tick", error=str(exc))
            self.stopped.wait(max(0.0, min(renew_due, sweep_due) - time.monotonic()))

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)
