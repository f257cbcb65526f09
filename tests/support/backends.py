"""The servers tests run against: always the embedded defaults (a redis-server child and a
SQLite file); also the machine's Redis and Postgres when TEST_REDIS_URL and
TEST_DATABASE_URL name them."""

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy
from pydantic import SecretStr
from sqlmodel import SQLModel

from dispatcher.db import init_db, make_engine
from dispatcher.embedded_redis import EmbeddedRedis
from dispatcher.settings import Settings

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL")

#: Short timings so the lease, sweeper and redelivery paths run in seconds.
FAST = {
    "environment": "test",
    "log_format": "json",
    "lease_s": 2.0,
    "lease_renew_s": 0.5,
    "sweep_interval_s": 0.5,
    "requeue_after_s": 5.0,
    "heartbeat_timeout_ms": 2000,
    "maintenance_chance": 200_000,
    "api_key_cache_s": 0.5,
    "fal_first_poll_s": 0.3,
    # Fewer than the default: a test that counts calls held beyond the threads needs fewer runs.
    "worker_threads": 8,
}


@contextmanager
def embedded_redis(directory: Path) -> Iterator[str]:
    server = EmbeddedRedis(directory)
    try:
        yield server.start()
    finally:
        server.stop()


@contextmanager
def postgres_database(base_url: str) -> Iterator[str]:
    """A fresh database on the server ``base_url`` points at, dropped afterwards."""
    name = f"dispatcher_test_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(_psycopg(base_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    url = _psycopg(base_url).rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def empty_tables(url: str) -> None:
    """Create the tables if need be, then empty every one of them."""
    engine = make_engine(url)
    init_db(engine)
    names = ", ".join(f'"{table.name}"' for table in SQLModel.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


def _psycopg(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def make_settings(
    database_url: str, redis_url: str, var_dir: Path, **overrides: object
) -> Settings:
    values = FAST | {
        "database_url": database_url,
        "redis_url": redis_url,
        "var_dir": var_dir,
        "redis_namespace": f"t{uuid.uuid4().hex[:8]}",
    }
    return Settings(**(values | overrides))  # type: ignore[arg-type]


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process the same settings."""
    env = {}
    for name, value in settings.model_dump().items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is not None:
            text = json.dumps(value) if isinstance(value, list | dict) else str(value)
            env[f"DISPATCHER_{name.upper()}"] = text
    return env
