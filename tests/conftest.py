"""Fixtures: the backends every test runs against, and the real system for end-to-end tests."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.settings import Settings
from tests.support.backends import (
    TEST_DATABASE_URL,
    TEST_REDIS_URL,
    embedded_redis,
    empty_tables,
    make_settings,
    postgres_database,
)
from tests.support.system import System

DATABASES = ["sqlite"] + (["postgres"] if TEST_DATABASE_URL else [])
REDISES = ["embedded"] + (["system"] if TEST_REDIS_URL and TEST_DATABASE_URL else [])


@pytest.fixture(scope="session")
def embedded_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with embedded_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    if not TEST_DATABASE_URL:
        pytest.skip("TEST_DATABASE_URL is not set")
    with postgres_database(TEST_DATABASE_URL) as url:
        yield url


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every store test runs on SQLite, and on Postgres when TEST_DATABASE_URL is set
    (one database for the session, emptied before each test)."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        empty_tables(url)
        return url
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def settings(database_url: str, embedded_redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, embedded_redis_url, tmp_path)


def _system_urls(kind: str, request: pytest.FixtureRequest, workdir: Path) -> tuple[str, str]:
    if kind == "system":
        assert TEST_REDIS_URL
        return request.getfixturevalue("postgres_url"), TEST_REDIS_URL
    return f"sqlite:///{workdir / 'store.db'}", request.getfixturevalue("embedded_redis_url")


@pytest.fixture(scope="session", params=REDISES)
def system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    """API + one simulated worker pool: embedded Redis and SQLite, and (when the machine has
    them) the system Redis with Postgres."""
    workdir = tmp_path_factory.mktemp(f"system-{request.param}")
    database_url, redis_url = _system_urls(request.param, request, workdir)
    running = System(make_settings(database_url, redis_url, workdir), workdir)
    try:
        running.start_worker()
        running.start_api()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def api_key(system: System) -> str:
    return system.new_tenant(f"tenant-{id(system)}")
