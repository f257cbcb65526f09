"""Worker parts over the real store (SQLite, and Postgres when configured) and real Redis."""

from collections.abc import Iterator

import pytest
import redis

from dispatcher.settings import Settings
from tests.dispatcher.conftest import engine  # noqa: F401  (the store tests' engine fixture)


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.locate_redis())
    yield client
    client.close()
