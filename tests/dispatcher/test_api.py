"""The HTTP API in process (FastAPI's TestClient) over real Redis and a real store.

Bad requests get one clear error shape, and nothing is stored or enqueued for them.
"""

import json

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, delete, func, select

from dispatcher.api.app import create_app
from dispatcher.models import ApiKey, Run, Tenant
from dispatcher.services import Services, build_services
from dispatcher.settings import Settings
from dispatcher.store import tenants
from tests.dispatcher.conftest import new_tenant

RUN = {"app": "simulated/echo", "input": {"prompt": "hi"}}


def _key(services: Services, name: str) -> str:
    return new_tenant(services, name)[1]["Authorization"].removeprefix("Bearer ")


@pytest.fixture
def auth(services: Services) -> dict[str, str]:
    return {"Authorization": f"Bearer {_key(services, 'acme')}"}


def _stored_runs(services: Services) -> int:
    with Session(services.engine) as session:
        return session.exec(select(func.count()).select_from(Run)).one()


def _queued_messages(services: Services) -> int:
    return int(services.redis.llen(f"{services.settings.redis_namespace}:run.simulated"))


def test_submit_answers_202_stores_the_run_and_enqueues_one_message(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    response = api.post("/v1/run", json=RUN | {"metadata": {"batch": "7"}}, headers=auth)
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued" and body["id"].startswith("run_")
    assert (_stored_runs(services), _queued_messages(services)) == (1, 1)
    run = api.get(f"/v1/runs/{body['id']}", headers=auth).json()
    assert run["status"] == "queued" and run["metadata"] == {"batch": "7"} and run["attempts"] == []


def test_the_queue_message_carries_ids_only(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    secret_prompt = "do-not-put-me-in-redis"
    api.post(
        "/v1/run", json={"app": "simulated/echo", "input": {"prompt": secret_prompt}}, headers=auth
    )
    dumped = b"".join(
        services.redis.dump(key) or b""
        for key in services.redis.scan_iter(f"{services.settings.redis_namespace}:*")
    )
    assert secret_prompt.encode() not in dumped


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "send an API key"),
        ({"Authorization": "Bearer dsp_wrong"}, "not valid"),
        ({"Authorization": "Basic abc"}, "send an API key"),
    ],
)
def test_a_missing_or_wrong_key_is_401(
    api: TestClient, headers: dict[str, str], message: str
) -> None:
    response = api.post("/v1/run", json=RUN, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert message in response.json()["error"]["message"]


BAD_BODIES = [
    pytest.param(b"{not json", 400, "malformed_json", id="malformed-json"),
    pytest.param(b'{"input": {}}', 422, "validation_error", id="missing-app"),
    pytest.param(
        b'{"app": "simulated/echo", "input": "text"}', 422, "validation_error", id="wrong-type"
    ),
    pytest.param(b'{"app": "nope/nothing", "input": {}}', 422, "unknown_app", id="unknown-app"),
    pytest.param(
        b'{"app": "simulated/echo", "input": {}, "tenant_id": "t"}',
        422,
        "validation_error",
        id="tenant_id",
    ),
    pytest.param(
        b'{"app": "simulated/echo", "input": {}, "status": "succeeded"}',
        422,
        "validation_error",
        id="status",
    ),
    pytest.param(
        b'{"app": "simulated/echo", "input": {}, "cost": 0}', 422, "validation_error", id="cost"
    ),
    pytest.param(
        b'{"app": "simulated/echo", "input": {}, "colour": "red"}',
        422,
        "validation_error",
        id="unknown-field",
    ),
    pytest.param(
        b'{"app": "simulated/echo", "input": {}, "webhook": "ftp://x"}',
        422,
        "validation_error",
        id="webhook",
    ),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_BODIES)
def test_a_bad_request_gets_a_clear_error_and_nothing_is_stored_or_enqueued(
    api: TestClient, auth: dict[str, str], services: Services, body: bytes, status: int, code: str
) -> None:
    response = api.post(
        "/v1/run", content=body, headers=auth | {"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert (_stored_runs(services), _queued_messages(services)) == (0, 0)


def test_an_empty_body_is_422_and_a_body_sent_as_curl_sends_it_is_read_as_json(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    empty = api.post("/v1/run", content=b"", headers=auth)
    assert empty.status_code == 422 and empty.json()["error"]["code"] == "validation_error"
    form = auth | {"content-type": "application/x-www-form-urlencoded"}
    assert api.post("/v1/run", content=json.dumps(RUN), headers=form).status_code == 202
    assert _stored_runs(services) == 1


def test_the_202_is_the_stored_run_as_accepted(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    body = api.post("/v1/run", json=RUN, headers=auth).json()
    with Session(services.engine) as session:
        run = session.get(Run, body["id"])
    assert run is not None
    assert body == {
        "id": run.id,
        "status": "queued",
        "app": "simulated/echo",
        "created_at": run.created_at.isoformat().replace("+00:00", "Z"),
        "urls": {"self": f"/v1/runs/{run.id}"},
    }


def test_the_submit_route_is_documented(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    submit = spec["paths"]["/v1/run"]["post"]
    body = submit["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/RunCreate"}
    assert {"app", "input", "webhook", "routing"} <= spec["components"]["schemas"]["RunCreate"][
        "properties"
    ].keys()
    assert {p["name"] for p in submit["parameters"]} == {"prefer", "idempotency-key"}
    accepted = submit["responses"]["202"]["content"]["application/json"]["schema"]
    assert accepted == {"$ref": "#/components/schemas/RunAccepted"}


def test_an_unknown_app_error_names_the_app(api: TestClient, auth: dict[str, str]) -> None:
    error = api.post("/v1/run", json={"app": "acme/ghost", "input": {}}, headers=auth).json()[
        "error"
    ]
    assert "acme/ghost" in error["message"] and error["details"] == {"app": "acme/ghost"}


def test_server_owned_fields_are_refused_by_name(api: TestClient, auth: dict[str, str]) -> None:
    error = api.post("/v1/run", json=RUN | {"tenant_id": "ten_x", "cost": 0}, headers=auth).json()[
        "error"
    ]
    assert "cost, tenant_id" in error["message"] and "set by the server" in error["message"]


def test_a_body_over_one_mib_is_413_whether_declared_or_streamed(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    big = b'{"app": "simulated/echo", "input": {"prompt": "' + b"x" * (1024 * 1024) + b'"}}'
    declared = api.post("/v1/run", content=big, headers=auth)
    streamed = api.post("/v1/run", content=iter([big[:1000], big[1000:]]), headers=auth)
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
    assert _stored_runs(services) == 0


def test_a_tenant_gets_404_for_another_tenants_run_as_for_a_missing_one(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    run_id = api.post("/v1/run", json=RUN, headers=auth).json()["id"]
    other = {"Authorization": f"Bearer {_key(services, 'globex')}"}
    foreign, missing = (
        api.get(f"/v1/runs/{run_id}", headers=other),
        api.get("/v1/runs/run_nope", headers=other),
    )
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["error"]["code"] == "not_found"
    assert api.get("/v1/runs", headers=other).json()["data"] == []


def test_listing_pages_newest_first_and_filters(api: TestClient, auth: dict[str, str]) -> None:
    ids = [api.post("/v1/run", json=RUN, headers=auth).json()["id"] for _ in range(3)]
    first = api.get("/v1/runs?limit=2", headers=auth).json()
    second = api.get(f"/v1/runs?limit=2&cursor={first['next_cursor']}", headers=auth).json()
    assert [r["id"] for r in first["data"] + second["data"]] == ids[::-1]
    assert second["next_cursor"] is None
    assert (
        len(api.get("/v1/runs?status=queued&app=simulated/echo", headers=auth).json()["data"]) == 3
    )
    assert api.get("/v1/runs?status=failed", headers=auth).json()["data"] == []
    assert api.get("/v1/runs?status=bogus", headers=auth).status_code == 422


def test_when_redis_is_down_submit_is_503_and_nothing_is_stored(
    auth: dict[str, str], settings: Settings
) -> None:
    down = build_services(
        settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}), "redis://127.0.0.1:1/0"
    )
    with TestClient(create_app(down)) as client:
        response = client.post("/v1/run", json=RUN, headers=auth)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "queue_unavailable"
        assert client.get("/readyz").status_code == 503
        assert _stored_runs(down) == 0


def test_a_store_failure_on_submit_is_a_500_that_says_nothing_of_it(settings: Settings) -> None:
    """The tenant's rows go while its key is cached: the run's INSERT fails on its foreign key."""
    services = build_services(
        settings.model_copy(update={"api_key_cache_s": 60.0}), str(settings.redis_url)
    )
    tenant_id, auth = new_tenant(services, "leaving")
    with TestClient(create_app(services), raise_server_exceptions=False) as client:
        assert client.get("/v1/runs", headers=auth).status_code == 200
        with Session(services.engine) as session:
            session.exec(delete(ApiKey).where(col(ApiKey.tenant_id) == tenant_id))
            session.exec(delete(Tenant).where(col(Tenant.id) == tenant_id))
            session.commit()
        response = client.post("/v1/run", json=RUN, headers=auth)
    assert response.status_code == 500
    assert response.json()["error"] == {
        "code": "internal_error",
        "message": "the server failed to handle this request",
        "details": None,
    }
    assert _stored_runs(services) == 0


def test_health_and_readiness(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ok", "checks": {"redis": "ok", "store": "ok"}}
    assert api.get("/docs").status_code == 200
    assert "/v1/run" in api.get("/openapi.json").json()["paths"]


def test_a_revoked_key_stops_working(api: TestClient, services: Services) -> None:
    key = _key(services, "leaving")
    headers = {"Authorization": f"Bearer {key}"}
    assert api.get("/v1/runs", headers=headers).status_code == 200
    with Session(services.engine) as session:
        tenant_id = tenants.tenant_for_key(session, key)
        assert tenant_id is not None
        assert tenants.revoke_api_keys(session, tenant_id) == 1
        session.commit()
    services.keys._known.clear()
    assert api.get("/v1/runs", headers=headers).status_code == 401


def test_an_app_id_with_a_path_passes_validation(api: TestClient, auth: dict[str, str]) -> None:
    """fal app ids have a path (``fal-ai/flux/schnell``); with no fal route this is no_route."""
    body = {"app": "fal-ai/flux/schnell", "input": {}}
    error = api.post("/v1/run", json=body, headers=auth).json()
    assert error["error"]["code"] == "no_route"
