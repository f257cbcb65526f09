"""The API in process (FastAPI's TestClient) over real Redis and a real store."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from dispatcher.api.app import create_app
from dispatcher.services import Services, build_services
from dispatcher.settings import Settings
from dispatcher.store import tenants


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    built = build_services(settings, str(settings.redis_url))
    yield built
    built.close()


@pytest.fixture
def api(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services)) as client:
        yield client


def new_tenant(services: Services, name: str) -> tuple[str, dict[str, str]]:
    """A tenant made straight in the store: (tenant id, its Authorization header)."""
    with Session(services.engine) as session:
        tenant_id = tenants.create_tenant(session, name).id
        key = tenants.create_api_key(session, tenant_id)
        session.commit()
    return tenant_id, {"Authorization": f"Bearer {key}"}
