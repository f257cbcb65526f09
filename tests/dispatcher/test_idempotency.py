"""``Idempotency-Key`` on ``POST /v1/run``: per tenant, for a day; the same key and body give
the first run, another body is refused, and concurrent duplicates create one run."""

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, func, select, update

from dispatcher.api.app import create_app
from dispatcher.db import utcnow
from dispatcher.models import IdempotencyKey, Run
from dispatcher.services import Services, build_services
from dispatcher.settings import Settings
from dispatcher.store import idempotency
from tests.dispatcher.conftest import new_tenant
from tests.fakes.server import FakeServer

RUN = {"app": "simulated/echo", "input": {"prompt": "hi"}}


def _runs(services: Services) -> int:
    with Session(services.engine) as session:
        return session.exec(select(func.count()).select_from(Run)).one()


def _messages(services: Services) -> int:
    return int(services.redis.llen(f"{services.settings.redis_namespace}:run.simulated"))


@pytest.fixture
def auth(services: Services) -> dict[str, str]:
    return new_tenant(services, "acme")[1]


def test_the_same_key_and_body_return_the_first_run(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    headers = auth | {"Idempotency-Key": "order-1"}
    first = api.post("/v1/run", json=RUN, headers=headers)
    again = api.post(
        "/v1/run", json={"input": {"prompt": "hi"}, "app": RUN["app"]}, headers=headers
    )
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert first.headers["idempotent-replayed"] == "false"
    assert again.headers["idempotent-replayed"] == "true"
    assert (_runs(services), _messages(services)) == (1, 1)


def test_the_same_key_with_another_body_is_422(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    headers = auth | {"Idempotency-Key": "order-2"}
    assert api.post("/v1/run", json=RUN, headers=headers).status_code == 202
    other = api.post("/v1/run", json=RUN | {"input": {"prompt": "bye"}}, headers=headers)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert _runs(services) == 1


def test_the_same_key_from_another_tenant_is_independent(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    other = new_tenant(services, "globex")[1]
    mine = api.post("/v1/run", json=RUN, headers=auth | {"Idempotency-Key": "k"})
    theirs = api.post("/v1/run", json=RUN, headers=other | {"Idempotency-Key": "k"})
    assert theirs.status_code == 202 and theirs.json()["id"] != mine.json()["id"]
    assert theirs.headers["idempotent-replayed"] == "false"


def test_a_key_older_than_a_day_starts_a_new_run(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    headers = auth | {"Idempotency-Key": "old"}
    first = api.post("/v1/run", json=RUN, headers=headers).json()["id"]
    with Session(services.engine) as session:
        session.exec(
            update(IdempotencyKey).values(created_at=utcnow() - timedelta(hours=24, seconds=1))
        )
        session.commit()
    second = api.post("/v1/run", json=RUN | {"input": {"prompt": "new"}}, headers=headers)
    assert second.status_code == 202 and second.json()["id"] != first
    with Session(services.engine) as session:
        assert idempotency.purge(session) == 0  # the expired row was replaced, not kept
        row = session.exec(select(IdempotencyKey).where(col(IdempotencyKey.key) == "old")).one()
        assert row.run_id == second.json()["id"]


def test_expired_keys_are_purged(api: TestClient, auth: dict[str, str], services: Services) -> None:
    api.post("/v1/run", json=RUN, headers=auth | {"Idempotency-Key": "a"})
    api.post("/v1/run", json=RUN, headers=auth | {"Idempotency-Key": "b"})
    with Session(services.engine) as session:
        assert idempotency.purge(session, utcnow() + timedelta(hours=23)) == 0
        assert idempotency.purge(session, utcnow() + timedelta(hours=25)) == 2
        session.commit()


@pytest.mark.parametrize("key", ["", "x" * 256])
def test_an_empty_or_overlong_key_is_refused(
    api: TestClient, auth: dict[str, str], services: Services, key: str
) -> None:
    response = api.post("/v1/run", json=RUN, headers=auth | {"Idempotency-Key": key})
    assert response.status_code == 422
    assert _runs(services) == 0


def test_when_the_queue_is_down_the_key_is_not_kept(
    api: TestClient, auth: dict[str, str], services: Services, settings: Settings
) -> None:
    unreachable = "redis://127.0.0.1:1/0"
    down = build_services(settings.model_copy(update={"redis_url": unreachable}), unreachable)
    with TestClient(create_app(down)) as client:
        refused = client.post("/v1/run", json=RUN, headers=auth | {"Idempotency-Key": "down"})
    assert refused.status_code == 503
    with Session(services.engine) as session:
        assert session.exec(select(func.count()).select_from(IdempotencyKey)).one() == 0
    retried = api.post("/v1/run", json=RUN, headers=auth | {"Idempotency-Key": "down"})
    assert retried.status_code == 202 and retried.headers["idempotent-replayed"] == "false"


def test_concurrent_duplicates_create_one_run(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    """Sixteen requests with one key race through a real HTTP server: one run, one message,
    and every answer names it."""
    with FakeServer(api.app) as server:
        barrier = threading.Barrier(16)

        def post(_: int) -> httpx.Response:
            barrier.wait(timeout=30)
            headers = auth | {"Idempotency-Key": "race"}
            return httpx.post(f"{server.url}/v1/run", json=RUN, headers=headers, timeout=60)

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(post, range(16)))
    assert {answer.status_code for answer in answers} == {202}
    assert len({answer.json()["id"] for answer in answers}) == 1
    assert sum(answer.headers["idempotent-replayed"] == "false" for answer in answers) == 1
    assert (_runs(services), _messages(services)) == (1, 1)
