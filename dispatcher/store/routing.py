"""Tenants' routing configs, versioned and append-only: a save adds the next version; and the
credentials a config may name."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from dispatcher.models import Credential, RoutingVersion
from schemas.routing import RoutingConfig


class VersionConflict(Exception):
    """Another save took the same version first."""


@dataclass(frozen=True)
class StoredConfig:
    version: int
    config: RoutingConfig
    created_at: datetime


def current_config(session: Session, tenant_id: str) -> StoredConfig | None:
    """The tenant's latest version (one read of the primary key's index); None if none saved."""
    row = session.exec(
        select(RoutingVersion)
        .where(col(RoutingVersion.tenant_id) == tenant_id)
        .order_by(col(RoutingVersion.version).desc())
        .limit(1)
    ).first()
    return None if row is None else _stored(row)


def credential_providers(session: Session, tenant_id: str, *, healthy_only: bool) -> dict[str, str]:
    """Name -> provider of the tenant's live credentials (the healthy ones only, if asked)."""
    query = select(Credential.name, Credential.provider).where(
        col(Credential.owner_id) == tenant_id, col(Credential.deleted_at).is_(None)
    )
    if healthy_only:
        query = query.where(col(Credential.healthy).is_(True))
    return dict(session.exec(query).all())


def put_config(session: Session, tenant_id: str, config: RoutingConfig) -> StoredConfig:
    """Add the next version. ``VersionConflict`` if a concurrent save took that number."""
    latest = session.exec(
        select(func.max(RoutingVersion.version)).where(col(RoutingVersion.tenant_id) == tenant_id)
    ).one()
    row = RoutingVersion(
        tenant_id=tenant_id, version=(latest or 0) + 1, config=config.model_dump(mode="json")
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise VersionConflict(f"version {row.version} was saved by another request") from None
    return _stored(row)


def _stored(row: RoutingVersion) -> StoredConfig:
    return StoredConfig(row.version, RoutingConfig.model_validate(row.config), row.created_at)
