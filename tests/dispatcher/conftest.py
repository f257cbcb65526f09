"""The API in process (FastAPI's TestClient) over real Redis and a real store."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from dispatcher.api.app import create_app
from dispatcher.db import init_db, make_engine
from dispatcher.services import Services, build_services
from dispatcher.settings import Settings
from dispatcher.store import tenants


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """The store on SQLite (and Postgres when configured), tables created."""
    engine = make_engine(database_url)
    init_db(engine)
    yield engine
    engine.dispose()


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
