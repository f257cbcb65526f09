"""Idempotency keys: a tenant's ``Idempotency-Key`` names the first run it created, for a day.

Concurrent duplicates are settled by the key row's primary key (tenant, key): each request
inserts its row in the same transaction as its run, the first to commit wins, and the others
fail on the primary key (Postgres makes them wait for the first commit; SQLite serializes
writers), roll back, and answer with the winner's run.
"""

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Connection, Table, bindparam, insert
from sqlmodel import Session, col, delete, select

from dispatcher.db import utcnow
from dispatcher.models import IdempotencyKey

#: How long a key names its run.
KEEP = timedelta(hours=24)
MAX_KEY_LENGTH = 255

_KEYS: Table = IdempotencyKey.__table__  # type: ignore[attr-defined]
_INSERT = insert(_KEYS)
_MATCH = (_KEYS.c.tenant_id == bindparam("t"), _KEYS.c.key == bindparam("k"))
_DELETE_EXPIRED = delete(_KEYS).where(*_MATCH, _KEYS.c.created_at <= bindparam("cutoff"))
_DELETE_OWN = delete(_KEYS).where(*_MATCH, _KEYS.c.run_id == bindparam("r"))


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


def new_key(tenant_id: str, key: str, hashed: str, run_id: str) -> dict[str, Any]:
    """The row that makes ``key`` name ``run_id``, for ``insert_keys``."""
    return {
        "tenant_id": tenant_id,
        "key": key,
        "body_hash": hashed,
        "run_id": run_id,
        "created_at": utcnow(),
    }


def insert_keys(connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Write the keys in the transaction of their runs; a key a concurrent request holds makes
    it fail (``IntegrityError``). An expired row for the same key is removed first."""
    if not rows:
        return
    cutoff = _cutoff()
    expired = [{"t": row["tenant_id"], "k": row["key"], "cutoff": cutoff} for row in rows]
    connection.execute(_DELETE_EXPIRED, expired)
    connection.execute(_INSERT, list(rows))


def delete_keys(connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Undo ``insert_keys`` (their runs could not be enqueued)."""
    if rows:
        connection.execute(
            _DELETE_OWN, [{"t": r["tenant_id"], "k": r["key"], "r": r["run_id"]} for r in rows]
        )


def purge(session: Session, now: datetime | None = None) -> int:
    """Delete every expired key; how many went."""
    result = session.exec(
        delete(IdempotencyKey).where(col(IdempotencyKey.created_at) <= _cutoff(now))
    )
    return result.rowcount


def _cutoff(now: datetime | None = None) -> datetime:
    return (now or utcnow()) - KEEP
