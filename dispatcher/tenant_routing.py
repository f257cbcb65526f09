"""What routes a tenant's runs, held in the API process so that a submit reads nothing.

A ``TenantRouting`` is a tenant's routing config (with its version) and its healthy
credentials (name -> provider), read from the store once, plus the chain each app resolves to
without a request override, resolved once (against the process's catalog and shared
providers, which do not change while it runs). ``RoutingCache`` keeps one per tenant in an
``OwnerCache``: the tenant's entry goes the moment a change to its config or credentials is
announced (``dispatcher.changes``: the API's routing and credential endpoints, and the workers
when a credential's health changes), and after ``ttl_s`` whatever happens.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from dispatcher.catalog import Catalog
from dispatcher.changes import OwnerCache
from dispatcher.routing import Resolution, resolve_chain
from dispatcher.store import routing as store
from dispatcher.store.runs import chain_snapshot
from schemas.routing import RoutingConfig, RoutingOverride

_ENTRY = "routing"


@dataclass(frozen=True)
class Routed:
    """A run's route: the config version it came from, the resolution, the chain as stored."""

    version: int | None
    resolution: Resolution
    snapshot: list[dict[str, Any]]


class TenantRouting:
    """One tenant's routing config and healthy credentials, as read at one moment."""

    def __init__(
        self, version: int | None, config: RoutingConfig | None, credentials: Mapping[str, str]
    ) -> None:
        self.version = version
        self.config = config
        self.credentials = credentials
        #: App -> its route without an override; at most one entry per catalog app.
        self._routes: dict[str, Routed] = {}

    def route(
        self,
        app: str,
        override: RoutingOverride | None,
        catalog: Catalog,
        shared_providers: Sequence[str],
    ) -> Routed:
        """The route of a run of ``app`` (a catalog app); ``NoRoute`` or ``OverrideRefused``
        as ``resolve_chain`` raises them."""
        found = None if override is not None else self._routes.get(app)
        if found is None:
            resolution = resolve_chain(
                app, self.config, override, catalog, self.credentials, shared_providers
            )
            found = Routed(self.version, resolution, chain_snapshot(resolution.chain))
            if override is None:
                self._routes[app] = found
        return found


class RoutingCache:
    """Each tenant's ``TenantRouting``; ``drop`` makes it a ``dispatcher.changes.Droppable``."""

    def __init__(self, engine: Engine, ttl_s: float) -> None:
        self.engine = engine
        self._entries: OwnerCache[str, TenantRouting] = OwnerCache(ttl_s)

    def cached(self, tenant_id: str) -> TenantRouting | None:
        """The tenant's routing if it is held; never reads the store (safe on an event loop)."""
        return self._entries.peek(tenant_id, _ENTRY)

    def load(self, tenant_id: str) -> TenantRouting:
        """The tenant's routing, read from the store if it is not held (blocks: use a thread)."""
        return self._entries.get(tenant_id, _ENTRY, lambda: self._read(tenant_id))

    def drop(self, owner: str | None) -> None:
        self._entries.drop(owner)

    def _read(self, tenant_id: str) -> TenantRouting:
        with Session(self.engine) as session:
            stored = store.current_config(session, tenant_id)
            credentials = store.credential_providers(session, tenant_id, healthy_only=True)
        return TenantRouting(
            stored.version if stored else None, stored.config if stored else None, credentials
        )
