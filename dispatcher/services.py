"""The long-lived things one API process holds: built once at start, closed at stop."""

from dataclasses import dataclass, field

import redis
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine

from dispatcher.auth import KeyCache
from dispatcher.catalog import Catalog, load_catalog
from dispatcher.db import init_db, make_engine
from dispatcher.events import RunEvents
from dispatcher.queue import make_broker
from dispatcher.settings import Settings
from dispatcher.vault import Keyring, keyring_for


@dataclass
class Services:
    settings: Settings
    engine: Engine
    broker: RedisBroker
    catalog: Catalog
    keyring: Keyring
    keys: KeyCache = field(init=False)
    events: RunEvents = field(init=False)

    def __post_init__(self) -> None:
        self.keys = KeyCache(self.engine, ttl_s=self.settings.api_key_cache_s)
        self.events = RunEvents(self.redis, self.settings.redis_namespace)

    @property
    def redis(self) -> redis.Redis:
        client: redis.Redis = self.broker.client
        return client

    def close(self) -> None:
        self.broker.close()
        self.engine.dispose()


def build_services(settings: Settings, redis_url: str) -> Services:
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    return Services(
        settings=settings,
        engine=engine,
        broker=make_broker(settings, redis_url),
        catalog=load_catalog(),
        keyring=keyring_for(settings),
    )
