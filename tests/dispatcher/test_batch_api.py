"""``POST /v1/runs/batch``: up to 1,000 runs, each validated on its own; the answer lists each
run's id or its error, in request order, and only the valid runs are stored and enqueued."""

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, func, select

from dispatcher.api.app import create_app
from dispatcher.models import Run
from dispatcher.services import Services, build_services
from dispatcher.settings import Settings
from tests.dispatcher.conftest import new_tenant

RUN = {"app": "simulated/echo", "input": {"prompt": "hi"}}


@pytest.fixture
def auth(services: Services) -> dict[str, str]:
    return new_tenant(services, "acme")[1]


def _stored(services: Services) -> list[str]:
    with Session(services.engine) as session:
        return list(session.exec(select(Run.id).order_by(col(Run.id))).all())


def _messages(services: Services) -> int:
    return int(services.redis.llen(f"{services.settings.redis_namespace}:run.simulated"))


def test_valid_runs_are_queued_and_each_bad_one_gets_its_own_error(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    runs = [
        RUN,
        {"app": "nobody/nothing", "input": {}},
        RUN | {"input": {"prompt": "second"}, "metadata": {"row": "3"}},
        {"app": "simulated/echo"},
        RUN | {"status": "succeeded"},
        RUN | {"webhook": "http://127.0.0.1/hook"},
    ]
    response = api.post("/v1/runs/batch", json={"runs": runs}, headers=auth)
    assert response.status_code == 200
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (2, 4)
    items = body["data"]
    assert [item["index"] for item in items] == list(range(6))
    assert [item["error"]["code"] if item["error"] else "ok" for item in items] == [
        "ok",
        "unknown_app",
        "ok",
        "validation_error",
        "validation_error",
        "unsafe_webhook_url",
    ]
    assert "input" in items[3]["error"]["message"]
    assert "status" in items[4]["error"]["message"]
    ids = [item["id"] for item in items if item["id"]]
    assert sorted(ids) == _stored(services) and _messages(services) == 2
    assert all(item["status"] == "queued" for item in items if item["id"])
    run = api.get(f"/v1/runs/{ids[1]}", headers=auth).json()
    assert run["metadata"] == {"row": "3"} and run["status"] == "queued"


def test_a_thousand_runs_fit_in_one_batch(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    runs = [RUN | {"input": {"prompt": str(i)}} for i in range(1000)]
    body = api.post("/v1/runs/batch", json={"runs": runs}, headers=auth).json()
    assert body["accepted"] == 1000 and len({item["id"] for item in body["data"]}) == 1000
    assert len(_stored(services)) == 1000 and _messages(services) == 1000


@pytest.mark.parametrize("runs", [[], [RUN] * 1001])
def test_an_empty_or_oversized_batch_is_refused_whole(
    api: TestClient, auth: dict[str, str], services: Services, runs: list[object]
) -> None:
    response = api.post("/v1/runs/batch", json={"runs": runs}, headers=auth)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    assert _stored(services) == []


def test_a_batch_needs_an_api_key(api: TestClient) -> None:
    assert api.post("/v1/runs/batch", json={"runs": [RUN]}).status_code == 401


def test_runs_of_a_batch_belong_to_its_tenant(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    run_id = api.post("/v1/runs/batch", json={"runs": [RUN]}, headers=auth).json()["data"][0]["id"]
    other = new_tenant(services, "globex")[1]
    assert api.get(f"/v1/runs/{run_id}", headers=other).status_code == 404


def test_when_the_queue_is_down_no_run_of_the_batch_is_kept(
    auth: dict[str, str], services: Services, settings: Settings
) -> None:
    unreachable = "redis://127.0.0.1:1/0"
    down = build_services(settings.model_copy(update={"redis_url": unreachable}), unreachable)
    with TestClient(create_app(down)) as client:
        body = client.post("/v1/runs/batch", json={"runs": [RUN, RUN]}, headers=auth).json()
    assert body["accepted"] == 0
    assert {item["error"]["code"] for item in body["data"]} == {"queue_unavailable"}
    with Session(services.engine) as session:
        assert session.exec(select(func.count()).select_from(Run)).one() == 0
