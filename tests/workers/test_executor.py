"""The hop executor in process, over the real store and Redis, with the simulated provider:
hop messages handed over by many threads are claimed in batches, called, recorded once and
announced after their commit."""

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, event
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from dispatcher.changes import ConfigChanges
from dispatcher.cooldowns import Cooldowns
from dispatcher.db import make_engine
from dispatcher.queue import make_broker
from dispatcher.settings import Settings
from dispatcher.store import runs, tenants
from dispatcher.vault import Keyring
from schemas.hops import Hop
from tests.support.statements import statements_run, writes_in_turn
from workers.actors import retry_infrastructure
from workers.credentials import Credentials
from workers.executor import HopExecutor
from workers.providers.simulated import SimulatedAdapter
from workers.runtime import Runtime

KEYRING = Keyring({"kek1": os.urandom(32)}, active="kek1")
ECHO = Hop(provider="simulated", model="echo")
TERMINAL = {"succeeded", "failed"}


def _executor(settings: Settings, engine: Engine, max_in_flight: int = 100) -> HopExecutor:
    broker = make_broker(settings, settings.locate_redis())
    changes = ConfigChanges(broker.client, settings.redis_namespace)
    return HopExecutor(
        settings, engine, broker, Runtime(max_in_flight, store_threads=2),
        {"simulated": SimulatedAdapter(settings)}, Credentials(KEYRING, ttl_s=60), changes,
    )  # fmt: skip


@pytest.fixture
def executor(settings: Settings, engine: Engine) -> Iterator[HopExecutor]:
    """A worker process's executor, its loop running; each test starts the writer."""
    built = _executor(settings, engine)
    built.runtime.start()
    yield built
    built.runtime.drain(10)
    built.writer.stop()
    built.runtime.stop()
    built.broker.close()


@pytest.fixture
def tenant_id(engine: Engine) -> str:
    with Session(engine) as session:
        tenant = tenants.create_tenant(session, f"t-{uuid.uuid4().hex[:8]}")
        session.commit()
        return tenant.id


def _new_run(engine: Engine, tenant_id: str, chain: list[Hop] | None = None) -> str:
    with Session(engine) as session:
        run = runs.create_run(
            session, tenant_id=tenant_id, app="simulated/echo", input={"prompt": "hello there"},
            chain=chain or [ECHO], requeue_after_s=600,
        )  # fmt: skip
        session.commit()
        return run.id


def _until(check: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not within the timeout"
        time.sleep(0.02)


def _runs(engine: Engine, tenant_id: str, run_ids: list[str]) -> list[Any]:
    with Session(engine) as session:
        return [runs.get_run(session, tenant_id, run_id) for run_id in run_ids]


def _events(client: redis.Redis, settings: Settings, run_id: str) -> list[str]:
    entries = client.xrange(f"{settings.redis_namespace}:events:{run_id}")
    return [json.loads(fields[b"event"])["type"] for _, fields in entries]


def _hand_over(executor: HopExecutor, messages: list[tuple[str, int]]) -> list[threading.Thread]:
    """Each message on a thread of its own, as dramatiq's worker threads would."""
    threads = [threading.Thread(target=executor.handle, args=message) for message in messages]
    for thread in threads:
        thread.start()
    return threads


def test_messages_handed_over_together_are_claimed_in_one_statement_and_recorded_once(
    executor: HopExecutor,
    engine: Engine,
    tenant_id: str,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    run_ids = [_new_run(engine, tenant_id) for _ in range(12)]
    messages = [(run_id, 0) for run_id in run_ids + run_ids[:4]]  # four duplicates
    with statements_run(engine, "UPDATE run SET status=") as updates:
        threads = _hand_over(executor, messages)
        _until(lambda: executor.writer.waiting == len(messages))
        executor.writer.start()
        for thread in threads:
            thread.join(10)
        _until(lambda: all(run.status in TERMINAL for run in _runs(engine, tenant_id, run_ids)))

    claims = [statement for statement, _ in updates if "RETURNING" in statement]
    assert len(claims) == 1
    found = _runs(engine, tenant_id, run_ids)
    assert {(run.status, run.attempt_count) for run in found} == {("succeeded", 1)}
    with Session(engine) as session:
        attempts = runs.attempts_of(session, run_ids)
    assert all(len(attempts[run_id]) == 1 for run_id in run_ids)
    _until(lambda: all(_events(redis_client, settings, r) for r in run_ids))
    assert {tuple(_events(redis_client, settings, r)) for r in run_ids} == {
        ("running", "succeeded")
    }
    # Counted for the metrics in the same round trip as the events.
    metrics = f"{settings.redis_namespace}:metrics"
    attempts = redis_client.hget(f"{metrics}:attempts", '["simulated","succeeded","none"]')
    assert attempts == b"12"
    assert redis_client.hget(f"{metrics}:runs_finished", "succeeded") == b"12"


def test_claims_and_outcomes_are_written_in_turn(
    executor: HopExecutor, engine: Engine, tenant_id: str
) -> None:
    """``dispatcher.writers``: no writer of the run path waits on SQLite's sleeping lock."""
    executor.writer.start()  # the fixture stops it
    if engine.dialect.name != "sqlite":
        pytest.skip("turns are taken on a SQLite file")
    run_ids = [_new_run(engine, tenant_id) for _ in range(3)]
    with writes_in_turn(engine) as held:
        for thread in _hand_over(executor, [(run_id, 0) for run_id in run_ids]):
            thread.join(10)
        _until(lambda: all(run.status in TERMINAL for run in _runs(engine, tenant_id, run_ids)))
    assert len(held) >= 3 and all(held), held  # the claim, the outcomes: their moves and rows


def test_an_outcome_is_announced_only_after_its_commit(
    executor: HopExecutor,
    engine: Engine,
    tenant_id: str,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    executor.writer.start()
    run_id = _new_run(engine, tenant_id)
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(f"{settings.redis_namespace}:run:{run_id}")
    statuses_seen = []
    try:
        executor.handle(run_id, 0)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1)
            if message is None:
                continue
            kind = json.loads(message["data"])["type"]
            statuses_seen.append((kind, _runs(engine, tenant_id, [run_id])[0].status))
            if kind == "succeeded":
                break
    finally:
        pubsub.close()
    assert statuses_seen[-1] == ("succeeded", "succeeded")


def test_a_duplicate_message_of_a_finished_run_changes_nothing(
    executor: HopExecutor, engine: Engine, tenant_id: str
) -> None:
    executor.writer.start()
    run_id = _new_run(engine, tenant_id)
    executor.handle(run_id, 0)
    _until(lambda: _runs(engine, tenant_id, [run_id])[0].status in TERMINAL)
    executor.handle(run_id, 0)
    executor.runtime.drain(10)
    with Session(engine) as session:
        assert len(runs.attempts_of(session, [run_id])[run_id]) == 1


def test_a_run_on_a_cooling_hop_is_passed_over_without_an_attempt(
    executor: HopExecutor,
    engine: Engine,
    tenant_id: str,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    executor.writer.start()
    chain = [ECHO, Hop(provider="simulated", model="other")]
    run_id = _new_run(engine, tenant_id, chain)
    Cooldowns(redis_client, settings.redis_namespace).note(tenant_id, chain, 0, "rate_limited", 60)
    executor.handle(run_id, 0)
    run = _runs(engine, tenant_id, [run_id])[0]
    assert (run.status, run.hop_index, run.attempt_count) == ("queued", 1, 0)
    _until(lambda: bool(_events(redis_client, settings, run_id)))
    assert _events(redis_client, settings, run_id) == ["fell_back"]


def test_a_store_error_reaches_the_message_to_be_retried_and_frees_its_slot(
    settings: Settings, tmp_path: Any
) -> None:
    tableless = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    broken = _executor(settings, tableless, max_in_flight=1)
    broken.writer.start()
    try:
        with pytest.raises(SQLAlchemyError) as raised:
            broken.handle("run_1", 0)
        assert retry_infrastructure(0, raised.value)
        assert broken.runtime.slots.acquire(blocking=False)
    finally:
        broken.writer.stop()
        broken.broker.close()
        tableless.dispose()


def test_outcomes_the_store_refused_are_recorded_once_it_takes_them(
    executor: HopExecutor, engine: Engine, tenant_id: str
) -> None:
    """A locked store (or a dropped connection) fails a cycle's transaction: its outcomes wait
    and go in a later cycle, while their leases are still renewed."""
    run_id = _new_run(engine, tenant_id)
    refusals = []

    def refuse_once(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("INSERT INTO attempt") and not refusals:
            refusals.append(statement)
            raise engine.dialect.loaded_dbapi.OperationalError("database is locked")

    event.listen(engine, "before_cursor_execute", refuse_once)
    executor.writer.start()
    executor.handle(run_id, 0)
    _until(lambda: _runs(engine, tenant_id, [run_id])[0].status in TERMINAL)
    assert refusals and _runs(engine, tenant_id, [run_id])[0].status == "succeeded"
    with Session(engine) as session:
        assert len(runs.attempts_of(session, [run_id])[run_id]) == 1
