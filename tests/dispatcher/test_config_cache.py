"""The API keeps each tenant's routing config and healthy credentials in process: a submit reads
nothing from the store, and every change is seen by the next submit, whether this process made
it or another one announced it."""

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlmodel import Session

from dispatcher.catalog import Catalog
from dispatcher.changes import ConfigChanges
from dispatcher.models import Run
from dispatcher.services import Services, build_services
from dispatcher.settings import Settings
from dispatcher.store.credentials import mark_unhealthy
from tests.dispatcher.conftest import new_tenant

CATALOG = Catalog(
    providers=frozenset({"simulated", "openai"}),
    apps={"openai/gpt-4o": {"openai": "gpt-4o-2024", "simulated": "echo"}},
)
RUN = {"app": "openai/gpt-4o", "input": {"prompt": "hi"}}
OPENAI_FIRST = {
    "rules": [
        {
            "match": "*",
            "hops": [
                {"provider": "openai", "credential": "byok:oa"},
                {"provider": "simulated", "credential": "shared"},
            ],
        }
    ]
}
OA = {"provider": "openai", "api_key": "sk-test-key"}


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    """Keys cached long enough that no lookup falls between two requests of a test."""
    built = build_services(
        settings.model_copy(update={"api_key_cache_s": 60.0}), settings.redis_url or ""
    )
    built.catalog = CATALOG
    assert built.changes_listener.subscribed.wait(10)
    yield built
    built.close()


@pytest.fixture
def tenant(api: TestClient, services: Services) -> tuple[str, dict[str, str]]:
    """A tenant with an OpenAI credential ``oa`` and a config that tries it first."""
    tenant_id, auth = new_tenant(services, "acme")
    assert api.put("/v1/credentials/oa", json=OA, headers=auth).status_code == 200
    assert api.put("/v1/routing", json=OPENAI_FIRST, headers=auth).status_code == 200
    return tenant_id, auth


def _chain(api: TestClient, services: Services, auth: dict[str, str]) -> list[str]:
    """Submit a run; the providers of the chain it was stored with."""
    response = api.post("/v1/run", json=RUN, headers=auth)
    assert response.status_code == 202, response.text
    with Session(services.engine) as session:
        run = session.get(Run, response.json()["id"])
        assert run is not None
        return [hop["provider"] for hop in run.chain]


def test_a_routing_change_is_seen_by_the_very_next_submit(
    api: TestClient, services: Services, tenant: tuple[str, dict[str, str]]
) -> None:
    _, auth = tenant
    assert _chain(api, services, auth) == ["openai", "simulated"]
    shared_only: dict[str, Any] = {
        "rules": [
            OPENAI_FIRST["rules"][0] | {"hops": [{"provider": "simulated", "credential": "shared"}]}
        ]
    }
    assert api.put("/v1/routing", json=shared_only, headers=auth).status_code == 200
    assert _chain(api, services, auth) == ["simulated"]
    assert api.put("/v1/routing", json=OPENAI_FIRST, headers=auth).status_code == 200
    assert _chain(api, services, auth) == ["openai", "simulated"]


def test_a_credential_change_is_seen_by_the_very_next_submit(
    api: TestClient, services: Services, tenant: tuple[str, dict[str, str]]
) -> None:
    _, auth = tenant
    assert _chain(api, services, auth) == ["openai", "simulated"]
    assert api.delete("/v1/credentials/oa", headers=auth).status_code == 204
    assert _chain(api, services, auth) == ["simulated"]
    assert api.put("/v1/credentials/oa", json=OA, headers=auth).status_code == 200
    assert _chain(api, services, auth) == ["openai", "simulated"]


def test_a_change_announced_by_another_process_is_seen(
    api: TestClient, services: Services, tenant: tuple[str, dict[str, str]]
) -> None:
    """A worker marks the credential unhealthy and announces it on its own Redis client: until
    then the API routes from its cache (the submit reads nothing); then the next submits skip it."""
    tenant_id, auth = tenant
    assert _chain(api, services, auth) == ["openai", "simulated"]
    with Session(services.engine) as session:
        assert mark_unhealthy(session, tenant_id, "oa", "401 from provider")
        session.commit()
    assert _chain(api, services, auth) == ["openai", "simulated"]
    client = redis.Redis.from_url(services.settings.redis_url or "")
    ConfigChanges(client, services.settings.redis_namespace).announce(tenant_id)
    client.close()
    deadline = time.monotonic() + 10
    while _chain(api, services, auth) != ["simulated"]:
        assert time.monotonic() < deadline, "the announced change never reached the API's cache"
        time.sleep(0.02)


def test_a_submit_of_a_known_tenant_reads_nothing_from_the_store(
    api: TestClient, services: Services, tenant: tuple[str, dict[str, str]]
) -> None:
    _, auth = tenant
    _chain(api, services, auth)
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement.split()[0].upper())

    event.listen(services.engine, "before_cursor_execute", record)
    try:
        assert api.post("/v1/run", json=RUN, headers=auth).status_code == 202
    finally:
        event.remove(services.engine, "before_cursor_execute", record)
    assert statements == ["INSERT"]
