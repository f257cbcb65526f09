"""Webhook delivery: the webhook pool (``python -m workers --webhooks``).

    {ns}:webhooks:outbox --Outbox thread--> WebhookDelivery row (pending) --> queue "webhooks"
    (events a run's webhook                  the body is fixed here:          (delivery id,
     subscribed to, see                      every attempt sends the          attempt number)
     dispatcher.events)                      same bytes and webhook-id

    dramatiq worker thread            event loop                        store thread
    claim attempt N (a stale or   ->  sign with the tenant's live   ->  log the attempt, move
    duplicated message: no-op)        secrets, POST via the SSRF        the delivery on; a retry
                                      guard (no redirects, 15 s)        is a delayed message

What an answer means (``decide``, a pure function): 2xx delivered; 410 stops the endpoint;
network errors, timeouts, 429 and 5xx are retried on ``RETRY_DELAYS_S`` (over a day in all);
anything else (3xx included: redirects are never followed) fails the delivery at once.
"""

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import httpx
import redis
import structlog
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from dispatcher import log as logging_setup
from dispatcher.db import init_db, make_engine, utcnow
from dispatcher.events import outbox_name
from dispatcher.netguard import UnsafeURL, guarded_client
from dispatcher.process import limit_arenas, settle_heap
from dispatcher.queue import DELIVERY_ACTOR, DELIVERY_QUEUE, enqueue_delivery, make_broker
from dispatcher.runviews import run_public
from dispatcher.settings import Settings
from dispatcher.store import idempotency
from dispatcher.store import runs as run_store
from dispatcher.store import webhooks as store
from dispatcher.vault import Keyring, VaultError, keyring_for
from dispatcher.webhooks import sign
from schemas.webhooks import TERMINAL_EVENTS
from workers.pool import DRAIN_TIMEOUT_S, wait_for_signal
from workers.runtime import Runtime

log = structlog.get_logger(__name__)

#: After attempt 1, 2, ... fails: wait this long (Standard Webhooks' schedule, 27.6 h in all).
RETRY_DELAYS_S: tuple[float, ...] = (5, 300, 1_800, 7_200, 18_000, 36_000, 36_000)
#: A pending delivery this overdue lost its message (or its worker died): send it again.
SWEEP_GRACE_S = 60.0
PURGE_EVERY_S = 600.0
USER_AGENT = "byok-dispatcher-webhooks/1"
GROUP = "webhooks"


# --- what an answer means -----------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one attempt got: an HTTP status, or an error (``retryable``: worth another try)."""

    status_code: int | None = None
    error: str | None = None
    retryable: bool = True


@dataclass(frozen=True)
class Delivered:
    pass


@dataclass(frozen=True)
class Retry:
    delay_s: float


@dataclass(frozen=True)
class GiveUp:
    #: The endpoint answered 410 Gone: send it nothing more.
    disable: bool = False


Decision = Delivered | Retry | GiveUp


def decide(outcome: Outcome, in_round: int, delays: Sequence[float]) -> Decision:
    """The next step after attempt ``in_round`` (1-based) of the current retry schedule."""
    code = outcome.status_code
    if code is not None and 200 <= code < 300:
        return Delivered()
    if code == 410:
        return GiveUp(disable=True)
    retryable = outcome.retryable if code is None else (code == 429 or code >= 500)
    if retryable and in_round <= len(delays):
        return Retry(delays[in_round - 1])
    return GiveUp()


def _describe(outcome: Outcome) -> str | None:
    code = outcome.status_code
    if code is None or 200 <= code < 300:
        return outcome.error
    if code == 410:
        return "410 Gone: the endpoint is disabled until a redeliver"
    if 300 <= code < 400:
        return f"{code}: redirects are not followed"
    return f"the endpoint answered {code}"


# --- delivery -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """A claimed attempt and what it needs. The secrets stay in memory, never in a log."""

    job: store.Job
    secrets: list[str] = field(repr=False)
    refusal: Outcome | None = None


@dataclass
class Deliverer:
    settings: Settings
    engine: Engine
    broker: RedisBroker
    runtime: Runtime
    keyring: Keyring
    client: httpx.AsyncClient
    delays: Sequence[float] = RETRY_DELAYS_S

    def handle(self, delivery_id: str, number: int) -> None:
        """The actor body: claim attempt ``number`` on a dramatiq thread, send it on the loop."""
        self.runtime.slots.acquire()
        try:
            ready = self._claim(delivery_id, number)
        except BaseException:
            self.runtime.slots.release()
            raise
        if ready is None:
            self.runtime.slots.release()
            log.debug("delivery message skipped", delivery_id=delivery_id, attempt=number)
            return
        self.runtime.spawn(self.attempt(ready))

    def _claim(self, delivery_id: str, number: int) -> Ready | None:
        lease_s = self.settings.webhook_timeout_s + SWEEP_GRACE_S
        with Session(self.engine) as session:
            job = store.claim(session, delivery_id, number, lease_s)
            if job is None:
                return None
            if store.endpoint_disabled(session, job.tenant_id, job.url):
                ready = Ready(job, [], Outcome(error="the endpoint is disabled", retryable=False))
            else:
                ready = self._with_secrets(session, job)
            session.commit()
        return ready

    def _with_secrets(self, session: Session, job: store.Job) -> Ready:
        try:
            secrets = store.live_secrets(session, self.keyring, job.tenant_id)
        except VaultError as exc:
            return Ready(job, [], Outcome(error=str(exc)))
        if not secrets:
            return Ready(job, [], Outcome(error="the tenant has no live webhook secret"))
        return Ready(job, secrets)

    async def attempt(self, ready: Ready) -> None:
        started_at, started = utcnow(), time.perf_counter()
        outcome = ready.refusal or await self._send(ready.job, ready.secrets)
        latency_ms = (time.perf_counter() - started) * 1000
        decision = decide(outcome, ready.job.in_round, self.delays)
        attempted = _attempted(outcome, decision, started_at, latency_ms)
        await self.runtime.in_store_thread(self._finish, ready.job, attempted, decision)

    async def _send(self, job: store.Job, secrets: list[str]) -> Outcome:
        headers = sign(job.delivery_id, int(time.time()), job.body, secrets)
        headers |= {"content-type": "application/json", "user-agent": USER_AGENT}
        timeout_s = self.settings.webhook_timeout_s
        try:
            async with (
                asyncio.timeout(timeout_s),
                self.client.stream("POST", job.url, content=job.body, headers=headers) as answer,
            ):
                return Outcome(status_code=answer.status_code)
        except UnsafeURL as exc:
            return Outcome(error=f"refused: {exc}", retryable=False)
        except (TimeoutError, httpx.TimeoutException):
            return Outcome(error=f"no answer within {timeout_s:g}s")
        except httpx.HTTPError as exc:
            return Outcome(error=f"{type(exc).__name__}: {exc}"[:300])

    def _finish(self, job: store.Job, attempted: store.Attempted, decision: Decision) -> None:
        with Session(self.engine) as session:
            recorded = store.record(session, job, attempted)
            if recorded and isinstance(decision, GiveUp) and decision.disable:
                store.disable_endpoint(session, job.tenant_id, job.url, "answered 410 Gone")
            session.commit()
        if recorded and isinstance(decision, Retry):
            enqueue_delivery(self.broker, job.delivery_id, job.number + 1, decision.delay_s)
        log.info(
            "webhook attempt recorded" if recorded else "webhook attempt dropped (not ours)",
            delivery_id=job.delivery_id,
            run_id=job.run_id,
            attempt=job.number,
            status_code=attempted.status_code,
            next=attempted.next_status,
        )


def _attempted(
    outcome: Outcome, decision: Decision, started_at: datetime, latency_ms: float
) -> store.Attempted:
    retry_at, next_status = None, "failed"
    if isinstance(decision, Delivered):
        next_status = "delivered"
    elif isinstance(decision, Retry):
        next_status, retry_at = "pending", utcnow() + timedelta(seconds=decision.delay_s)
    return store.Attempted(
        status_code=outcome.status_code,
        error=_describe(outcome),
        latency_ms=round(latency_ms, 3),
        started_at=started_at,
        next_status=next_status,
        retry_at=retry_at,
    )


# --- the outbox ---------------------------------------------------------------------------


def webhook_body(event: dict[str, Any], run: dict[str, Any] | None) -> bytes:
    """``{"type": "run.<event>", "timestamp", "data": {run_id, <event fields>, run?}}``; a
    terminal event carries the run as ``GET /v1/runs/{id}`` shows it."""
    data = {k: v for k, v in event.items() if k not in ("tenant_id", "type", "at")}
    if run is not None:
        data["run"] = run
    stamp = datetime.fromtimestamp(event["at"], UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": f"run.{event['type']}", "timestamp": stamp, "data": data}).encode()


class Outbox(threading.Thread):
    """Turns outbox entries into deliveries (one consumer group, so many pools share the
    work), sweeps lost deliveries and purges expired idempotency keys."""

    def __init__(self, settings: Settings, engine: Engine, broker: RedisBroker) -> None:
        super().__init__(name="webhook-outbox", daemon=True)
        self.settings = settings
        self.engine = engine
        self.broker = broker
        self.client: redis.Redis = broker.client
        self.key = outbox_name(settings.redis_namespace)
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.stopped = threading.Event()

    def run(self) -> None:
        sweep_due = purge_due = time.monotonic()
        grouped = False
        while not self.stopped.is_set():
            try:
                if not grouped:
                    self._ensure_group()
                    grouped = True
                self.fan_out(self._read())
                if time.monotonic() >= sweep_due:
                    sweep_due = time.monotonic() + self.settings.sweep_interval_s
                    self.sweep()
                if time.monotonic() >= purge_due:
                    purge_due = time.monotonic() + PURGE_EVERY_S
                    self.purge()
            except (SQLAlchemyError, redis.RedisError) as exc:
                log.error("webhook outbox failed; trying again", error=str(exc)[:300])
                grouped = False  # the stream may have gone with its group
                self.stopped.wait(1.0)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read(self) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
        """Entries another consumer took and never acknowledged (it died), else new ones."""
        claimed = self.client.xautoclaim(
            self.key, GROUP, self.consumer, min_idle_time=30_000, start_id="0-0", count=100
        )
        if claimed[1]:
            return list(claimed[1])
        found: Any = self.client.xreadgroup(
            GROUP, self.consumer, {self.key: ">"}, count=100, block=1000
        )
        return [entry for _, entries in found or [] for entry in entries]

    def fan_out(self, entries: list[tuple[bytes, dict[bytes, bytes] | None]]) -> None:
        if not entries:
            return
        with Session(self.engine) as session:
            new = [self._delivery(session, entry_id.decode(), f) for entry_id, f in entries]
            pending = store.add_deliveries(session, [item for item in new if item])
            session.commit()
        for delivery_id, number in pending:
            enqueue_delivery(self.broker, delivery_id, number)
        ids = [entry_id for entry_id, _ in entries]
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.key, GROUP, *ids)
        pipe.xdel(self.key, *ids)
        pipe.execute()

    def _delivery(
        self, session: Session, entry_id: str, fields: dict[bytes, bytes] | None
    ) -> store.NewDelivery | None:
        try:
            event = json.loads((fields or {})[b"event"])
            url = (fields or {})[b"url"].decode()
        except (KeyError, ValueError):
            log.error("an outbox entry without an event or URL was dropped", entry=entry_id)
            return None
        run = None
        if event["type"] in TERMINAL_EVENTS:
            found = run_store.get_run(session, event["tenant_id"], event["run_id"])
            if found is not None:
                attempts = run_store.attempts_of(session, [found.id])[found.id]
                run = run_public(found, attempts).model_dump(mode="json")
        return store.NewDelivery(
            source=entry_id,
            run_id=event["run_id"],
            tenant_id=event["tenant_id"],
            event=event["type"],
            url=url,
            body=webhook_body(event, run),
        )

    def sweep(self) -> None:
        with Session(self.engine) as session:
            taken = store.sweep(session, SWEEP_GRACE_S)
            session.commit()
        for delivery_id, number in taken:
            log.warning("delivery taken back by the sweeper", delivery_id=delivery_id)
            enqueue_delivery(self.broker, delivery_id, number)

    def purge(self) -> None:
        with Session(self.engine) as session:
            purged = idempotency.purge(session)
            session.commit()
        if purged:
            log.info("expired idempotency keys purged", count=purged)


# --- the pool -----------------------------------------------------------------------------


def run_webhook_pool(settings: Settings, delays: Sequence[float] = RETRY_DELAYS_S) -> None:
    """Deliver webhooks until SIGTERM or SIGINT."""
    limit_arenas()
    logging_setup.configure(settings.resolved_log_format, settings.log_level)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    broker = make_broker(settings, settings.locate_redis())
    runtime = Runtime(settings.max_in_flight, settings.store_threads)
    client = guarded_client(
        allow_private=settings.webhook_allow_private, timeout=settings.webhook_timeout_s
    )
    deliverer = Deliverer(settings, engine, broker, runtime, keyring_for(settings), client, delays)
    declare = dramatiq.actor(
        broker=broker, actor_name=DELIVERY_ACTOR, queue_name=DELIVERY_QUEUE, max_retries=0
    )
    declare(deliverer.handle)
    worker = dramatiq.Worker(
        broker,
        queues={DELIVERY_QUEUE},
        worker_threads=settings.worker_threads,
        worker_timeout=settings.worker_poll_ms,
    )
    outbox = Outbox(settings, engine, broker)

    frozen = settle_heap()
    runtime.start()
    worker.start()
    outbox.start()
    log.info("webhook pool started", retry_delays_s=list(delays), frozen_objects=frozen)
    wait_for_signal()

    log.info("webhook pool stopping", in_flight=runtime.in_flight)
    worker.stop()
    outbox.stop()
    runtime.drain(DRAIN_TIMEOUT_S)
    runtime.call(client.aclose(), timeout=5)
    runtime.stop()
    broker.close()
    engine.dispose()
