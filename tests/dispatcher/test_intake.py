"""Group commit: submissions that arrive together are stored in one transaction and sent in one
Redis round trip; a key clash fails only its own submission; a Redis failure keeps nothing."""

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlmodel import Session, col, func, select

from dispatcher.intake import GATHER_S, Intake, KeyTaken, QueueUnavailable, Submission
from dispatcher.models import IdempotencyKey, Run
from dispatcher.queue import make_broker, queue_name
from dispatcher.services import Services
from dispatcher.settings import Settings
from dispatcher.store import idempotency
from dispatcher.store.runs import NewRun, new_run
from tests.dispatcher.conftest import new_tenant
from tests.support.statements import writes_in_turn

CHAIN = [{"provider": "simulated", "credential": "shared", "model": "echo", "timeout_s": 60.0}]


@pytest.fixture
def tenant_id(services: Services) -> str:
    return new_tenant(services, "acme")[0]


@pytest.fixture
def inserts(services: Services) -> Iterator[list[int]]:
    """The number of rows of each ``INSERT INTO run`` the store executes."""
    seen: list[int] = []

    def record(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, many: bool) -> None:
        if statement.startswith("INSERT INTO run "):
            seen.append(len(params) if many else 1)

    event.listen(services.engine, "before_cursor_execute", record)
    yield seen
    event.remove(services.engine, "before_cursor_execute", record)


def _run(tenant_id: str) -> NewRun:
    return new_run(
        tenant_id=tenant_id, app="simulated/echo", input={"prompt": "x"}, chain=CHAIN,
        requeue_after_s=600,
    )  # fmt: skip


def _submit_all(intake: Intake, submissions: list[Submission]) -> list[Any]:
    async def all_at_once() -> list[Any]:
        return await asyncio.gather(
            *(intake.submit(one) for one in submissions), return_exceptions=True
        )

    return asyncio.run(all_at_once())


def _stored(services: Services, runs: list[NewRun]) -> int:
    with Session(services.engine) as session:
        query = select(func.count()).select_from(Run).where(col(Run.id).in_([r.id for r in runs]))
        return session.exec(query).one()


def _queued(services: Services) -> int:
    return int(
        services.redis.llen(f"{services.settings.redis_namespace}:{queue_name('simulated')}")
    )


def test_submissions_that_arrive_together_are_written_as_one_batch(
    services: Services, tenant_id: str, inserts: list[int]
) -> None:
    runs = [_run(tenant_id) for _ in range(20)]
    outcomes = _submit_all(services.intake, [Submission([run]) for run in runs])
    assert outcomes == [None] * 20
    assert inserts == [20]
    assert (_stored(services, runs), _queued(services)) == (20, 20)
    bell = services.broker.bell(queue_name("simulated"))
    assert services.redis.llen(bell) == 1  # one ring for the whole batch


def test_submissions_arriving_as_a_batch_stops_gathering_are_each_written_and_answered(
    services: Services, tenant_id: str
) -> None:
    """Clients that submit again about ``GATHER_S`` after each answer arrive just as the next
    batch gives up waiting for them: none of their submissions is lost or refused."""
    runs: list[NewRun] = []

    async def client() -> None:
        for _ in range(20):
            runs.append(_run(tenant_id))
            await services.intake.submit(Submission([runs[-1]]))
            await asyncio.sleep(GATHER_S * random.uniform(0.8, 1.2))

    async def clients() -> list[Any]:
        return await asyncio.gather(*(client() for _ in range(16)), return_exceptions=True)

    assert asyncio.run(clients()) == [None] * 16
    assert (_stored(services, runs), _queued(services)) == (320, 320)


def test_a_batch_holds_at_most_max_runs(
    services: Services, tenant_id: str, inserts: list[int]
) -> None:
    intake = Intake(services.engine, services.broker, services.events, max_runs=5)
    runs = [_run(tenant_id) for _ in range(12)]
    try:
        assert _submit_all(intake, [Submission([run]) for run in runs]) == [None] * 12
    finally:
        intake.close()
    assert inserts == [5, 5, 2]
    assert _stored(services, runs) == 12


def test_a_key_held_by_another_request_fails_only_its_own_submission(
    services: Services, tenant_id: str
) -> None:
    with services.engine.begin() as connection:
        idempotency.insert_keys(connection, [idempotency.new_key(tenant_id, "k", "h", "run_x")])
    keyed, plain = _run(tenant_id), _run(tenant_id)
    key = idempotency.new_key(tenant_id, "k", "h", keyed.id)
    outcomes = _submit_all(services.intake, [Submission([keyed], [key]), Submission([plain])])
    assert isinstance(outcomes[0], KeyTaken) and outcomes[1] is None
    assert (_stored(services, [keyed]), _stored(services, [plain])) == (0, 1)
    assert _queued(services) == 1


def test_when_redis_fails_the_batch_keeps_nothing(
    services: Services, settings: Settings, tenant_id: str
) -> None:
    down = make_broker(settings, "redis://127.0.0.1:1/0")
    intake = Intake(services.engine, down, services.events, max_runs=100)
    runs = [_run(tenant_id) for _ in range(3)]
    key = idempotency.new_key(tenant_id, "k", "h", runs[0].id)
    try:
        outcomes = _submit_all(intake, [Submission([runs[0]], [key]), Submission(runs[1:])])
    finally:
        intake.close()
        down.close()
    assert [type(outcome) for outcome in outcomes] == [QueueUnavailable, QueueUnavailable]
    assert _stored(services, runs) == 0
    with Session(services.engine) as session:
        assert session.exec(select(func.count()).select_from(IdempotencyKey)).one() == 0


def test_the_intakes_writes_are_made_in_turn(services: Services, tenant_id: str) -> None:
    """Its batch and, when Redis fails, the batch's deletion (``dispatcher.writers``)."""
    if services.engine.dialect.name != "sqlite":
        pytest.skip("turns are taken on a SQLite file")
    with writes_in_turn(services.engine) as held:
        assert _submit_all(services.intake, [Submission([_run(tenant_id)])]) == [None]
    assert held and all(held), held
