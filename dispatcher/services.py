"""The long-lived things one API process holds: built once at start, closed at stop."""

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import redis
from sqlalchemy import Engine

from dispatcher.auth import KeyCache
from dispatcher.catalog import Catalog, load_catalog
from dispatcher.changes import ChangeListener, ConfigChanges
from dispatcher.checkpoints import WalCheckpointer
from dispatcher.db import init_db, make_engine
from dispatcher.doorbell import DoorbellBroker
from dispatcher.events import RunEvents
from dispatcher.intake import Intake
from dispatcher.queue import make_broker
from dispatcher.settings import Settings
from dispatcher.tenant_routing import RoutingCache

if TYPE_CHECKING:
    from dispatcher.vault import Keyring


@dataclass
class Services:
    settings: Settings
    engine: Engine
    broker: DoorbellBroker
    catalog: Catalog
    keys: KeyCache = field(init=False)
    events: RunEvents = field(init=False)
    #: Each tenant's routing config and healthy credentials, dropped when they change.
    routing: RoutingCache = field(init=False)
    #: Announces this process's changes of a tenant's configuration to every process.
    changes: ConfigChanges = field(init=False)
    intake: Intake = field(init=False)
    changes_listener: ChangeListener = field(init=False)
    checkpoints: WalCheckpointer = field(init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        self.keys = KeyCache(self.engine, ttl_s=settings.api_key_cache_s)
        self.events = RunEvents(self.redis, settings.redis_namespace)
        self.routing = RoutingCache(self.engine, settings.config_cache_s)
        self.changes = ConfigChanges(self.redis, settings.redis_namespace)
        self.changes.local.append(self.routing)
        self.intake = Intake(self.engine, self.broker, self.events, settings.submit_batch_max)
        self.changes_listener = ChangeListener(self.redis, settings.redis_namespace, [self.routing])
        self.changes_listener.start()
        self.checkpoints = WalCheckpointer(self.engine)
        self.checkpoints.start()

    @property
    def redis(self) -> redis.Redis:
        client: redis.Redis = self.broker.client
        return client

    @cached_property
    def keyring(self) -> "Keyring":
        """The vault's keys, loaded on first use: a submit never needs them."""
        from dispatcher.vault import keyring_for

        return keyring_for(self.settings)

    def close(self) -> None:
        self.changes_listener.stop()
        self.intake.close()
        self.checkpoints.stop()
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
    )
