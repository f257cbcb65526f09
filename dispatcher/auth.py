"""API-key authentication, with a short in-process cache so the submit path skips the lookup."""

import time

from sqlalchemy import Engine
from sqlmodel import Session

from dispatcher.store.tenants import hash_key, tenant_for_key


class KeyCache:
    """Maps a key's hash to its tenant for ``ttl_s``; a revoked key stops working within it."""

    def __init__(self, engine: Engine, ttl_s: float) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self._known: dict[str, tuple[str, float]] = {}

    def cached(self, key: str) -> str | None:
        """The key's tenant if the cache holds it; never reads the store (safe on an event loop)."""
        hit = self._known.get(hash_key(key))
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

    def tenant(self, key: str) -> str | None:
        """The key's tenant, read from the store unless cached (blocks: use a thread)."""
        tenant_id = self.cached(key)
        if tenant_id is not None:
            return tenant_id
        digest = hash_key(key)
        with Session(self.engine) as session:
            tenant_id = tenant_for_key(session, key)
        if tenant_id is None:
            self._known.pop(digest, None)
            return None
        self._known[digest] = (tenant_id, time.monotonic() + self.ttl_s)
        return tenant_id
