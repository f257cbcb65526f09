"""Idempotency keys: a tenant's ``Idempotency-Key`` names the first run it created, for a day.

Concurrent duplicates are settled by the key row's primary key (tenant, key): each request
inserts its row in the same transaction as its run, the first to commit wins, and the others
fail on the primary key (Postgres makes them wait for the first commit; SQLite serializes
writers), roll back, and answer with the winner's run.
"""

import hashlib
import json
from datetime import datetime, timedelta

from pydantic import BaseModel
from sqlmodel import Session, col, delete, select

from dispatcher.db import utcnow
from dispatcher.models import IdempotencyKey

#: How long a key names its run.
KEEP = timedelta(hours=24)
MAX_KEY_LENGTH = 255


def body_hash(body: BaseModel) -> str:
    """The validated body's fingerprint: key order and spacing do not change it."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def find(session: Session, tenant_id: str, key: str) -> IdempotencyKey | None:
    """The tenant's live row for ``key`` (younger than ``KEEP``), if any."""
    return session.exec(
        select(IdempotencyKey).where(
            col(IdempotencyKey.tenant_id) == tenant_id,
            col(IdempotencyKey.key) == key,
            col(IdempotencyKey.created_at) > _cutoff(),
        )
    ).first()


def remember(session: Session, tenant_id: str, key: str, hashed: str, run_id: str) -> None:
    """Add the key for ``run_id`` (flushed, so a concurrent duplicate fails here or at commit).

    An expired row for the same key is removed first."""
    _delete(session, tenant_id, key, expired_only=True)
    session.add(IdempotencyKey(tenant_id=tenant_id, key=key, body_hash=hashed, run_id=run_id))
    session.flush()


def forget(session: Session, tenant_id: str, key: str) -> None:
    """Undo ``remember`` (its run could not be enqueued)."""
    _delete(session, tenant_id, key, expired_only=False)


def purge(session: Session, now: datetime | None = None) -> int:
    """Delete every expired key; how many went."""
    result = session.exec(
        delete(IdempotencyKey).where(col(IdempotencyKey.created_at) <= _cutoff(now))
    )
    return result.rowcount


def _delete(session: Session, tenant_id: str, key: str, *, expired_only: bool) -> None:
    query = delete(IdempotencyKey).where(
        col(IdempotencyKey.tenant_id) == tenant_id, col(IdempotencyKey.key) == key
    )
    if expired_only:
        query = query.where(col(IdempotencyKey.created_at) <= _cutoff())
    session.exec(query)


def _cutoff(now: datetime | None = None) -> datetime:
    return (now or utcnow()) - KEEP
