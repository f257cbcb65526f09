"""Tenant set-up used by the command line and the development runner."""

from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session

from dispatcher.store import tenants


def create_tenant_with_key(engine: Engine, name: str) -> tuple[str, str]:
    """A new tenant and its first API key: (tenant id, key)."""
    with Session(engine) as session:
        if tenants.tenant_by_name(session, name) is not None:
            raise ValueError(f"a tenant named {name!r} exists already")
        tenant = tenants.create_tenant(session, name)
        key = tenants.create_api_key(session, tenant.id, name="first key")
        session.commit()
        return tenant.id, key


def create_key(engine: Engine, tenant_name: str, key_name: str = "") -> str:
    with Session(engine) as session:
        tenant = tenants.tenant_by_name(session, tenant_name)
        if tenant is None:
            raise ValueError(f"no tenant named {tenant_name!r}")
        key = tenants.create_api_key(session, tenant.id, name=key_name)
        session.commit()
        return key


def ensure_dev_key(engine: Engine, key_file: Path, tenant_name: str = "dev") -> str:
    """The dev tenant's key: the one in ``key_file`` while it still works, else a new one."""
    if key_file.exists():
        key = key_file.read_text().strip()
        with Session(engine) as session:
            if tenants.tenant_for_key(session, key) is not None:
                return key
    try:
        _, key = create_tenant_with_key(engine, tenant_name)
    except ValueError:
        key = create_key(engine, tenant_name, key_name="development")
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    return key
