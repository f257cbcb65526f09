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

    def tenant(self, key: str) -> str | None:
        digest = hash_key(key)
        hit = self._known.get(digest)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        with Session(self.engine) as session:
            tenant_id = tenant_for_key(session, key)
        if tenant_id is None:
            self._known.pop(digest, None)
            return None
        self._known[digest] = (tenant_id, now + self.ttl_s)
        return tenant_id
