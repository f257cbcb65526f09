"""Tenants and their API keys. Keys are random 256-bit secrets, stored as SHA-256 hashes."""

import hashlib
import secrets

from sqlmodel import Session, col, select

from dispatcher.db import utcnow
from dispatcher.ids import new_id
from dispatcher.models import ApiKey, Tenant

KEY_PREFIX = "dsp_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_tenant(session: Session, name: str) -> Tenant:
    tenant = Tenant(id=new_id("ten"), name=name)
    session.add(tenant)
    session.flush()
    return tenant


def tenant_by_name(session: Session, name: str) -> Tenant | None:
    return session.exec(select(Tenant).where(Tenant.name == name)).first()


def create_api_key(session: Session, tenant_id: str, name: str = "") -> str:
    """Store a new key's hash and return the key itself: the only time it is ever seen."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(
            id=new_id("key"),
            tenant_id=tenant_id,
            key_hash=hash_key(key),
            prefix=key[:12],
            name=name,
        )
    )
    session.flush()
    return key


def tenant_for_key(session: Session, key: str) -> str | None:
    """The tenant id a live key belongs to, or None."""
    return session.exec(
        select(ApiKey.tenant_id).where(
            ApiKey.key_hash == hash_key(key), col(ApiKey.revoked_at).is_(None)
        )
    ).first()


def revoke_api_keys(session: Session, tenant_id: str) -> int:
    live = select(ApiKey).where(ApiKey.tenant_id == tenant_id, col(ApiKey.revoked_at).is_(None))
    keys = session.exec(live).all()
    for key in keys:
        key.revoked_at = utcnow()
        session.add(key)
    return len(keys)
