"""Which credential a hop uses, decrypted once per process and kept until its owner changes.

    byok:<name>  the tenant's own credential <name>
    shared       the platform's credential registered for the hop's provider
                 (none needed for the built-in simulated provider)

Every run needs its hop's credential, and reading and decrypting it is two ``SELECT``s and
AES-GCM: so each process keeps what it read in an ``OwnerCache`` per owner (the tenant, or
``PLATFORM_OWNER`` for shared credentials) and credential name. A change to an owner's
credentials -- the API storing, replacing or revoking one, a worker marking one unhealthy --
is announced after its commit (``dispatcher.changes``) and drops the owner's entries in every
process at once; an announcement that went missing is outlived by ``ttl_s`` at most. A
credential that is missing or revoked is kept as such too, until the same.

A problem is returned as the ``ProviderError`` the attempt records, so a revoked or
unhealthy key moves the run along its chain like any refusal. A credential that does
not decrypt as its own fails the run at once: the vault fails closed (and is read again next
time, not kept).
"""

from collections.abc import Sequence

from sqlalchemy import Connection
from sqlmodel import Session

from dispatcher.changes import OwnerCache
from dispatcher.store import credentials as store
from dispatcher.store.lifecycle import AttemptRow
from dispatcher.vault import PLATFORM_OWNER, Keyring, VaultError
from schemas.credentials import CredentialSecret
from schemas.errors import CREDENTIAL_CLASSES
from schemas.hops import Hop
from workers.providers.errors import ProviderError

#: Providers that need no credential at all.
KEYLESS = frozenset({"simulated"})

Loaded = CredentialSecret | None | ProviderError


def owner_and_name(tenant_id: str, hop: Hop) -> tuple[str, str]:
    if hop.credential_name is None:
        return PLATFORM_OWNER, hop.provider
    return tenant_id, hop.credential_name


class Credentials:
    """The credentials this process's hops call with (see the module's docstring)."""

    def __init__(self, keyring: Keyring, ttl_s: float) -> None:
        self.keyring = keyring
        #: (owner, name) -> the decrypted secret, or None when there is none.
        self.cache: OwnerCache[str, CredentialSecret | None] = OwnerCache(ttl_s)

    def load(self, connection: Connection, tenant_id: str, hop: Hop) -> Loaded:
        """The hop's credential; read (in ``connection``'s transaction) only when not kept."""
        if hop.provider in KEYLESS:
            return None
        owner, name = owner_and_name(tenant_id, hop)
        try:
            secret = self.cache.get(owner, name, lambda: self._read(connection, owner, name))
        except VaultError as exc:
            return ProviderError("invalid_request", f"credential cannot be used: {exc}")
        if secret is None:
            missing = f"credential {name!r}" if owner != PLATFORM_OWNER else "shared credential"
            return ProviderError(
                "auth_failed", f"{missing} for {hop.provider} is missing or revoked"
            )
        if secret.provider != hop.provider:
            return ProviderError(
                "auth_failed", f"credential {name!r} is for {secret.provider}, not {hop.provider}"
            )
        return secret

    def _read(self, connection: Connection, owner: str, name: str) -> CredentialSecret | None:
        with Session(bind=connection) as session:
            return store.load_secret(session, self.keyring, owner, name)


def note_health(
    connection: Connection, attempts: Sequence[tuple[str, Hop, AttemptRow]]
) -> set[str]:
    """A tenant credential refused for quota or auth is unhealthy until it next succeeds.
    ``attempts`` (tenant id, hop, attempt) are a batch in the order they ended: each
    credential takes the state its last attempt leaves it in, the ones that worked in one
    statement (every attempt of a batch, or none, asks for it), the refused ones (rare) in one
    each. The tenants whose credential health changed: the caller announces their change."""
    last: dict[tuple[str, str], AttemptRow] = {}
    for tenant_id, hop, attempt in attempts:
        says = attempt.outcome == "succeeded" or attempt.error_class in CREDENTIAL_CLASSES
        if hop.credential_name is not None and says:
            last[(tenant_id, hop.credential_name)] = attempt
    worked = [key for key, attempt in last.items() if attempt.outcome == "succeeded"]
    changed = set(store.mark_all_healthy(connection, worked))
    refused = {key: attempt for key, attempt in last.items() if attempt.outcome != "succeeded"}
    if refused:
        with Session(bind=connection) as session:
            for (tenant_id, name), attempt in refused.items():
                reason = f"{attempt.error_class}: {attempt.message}"
                if store.mark_unhealthy(session, tenant_id, name, reason):
                    changed.add(tenant_id)
    return changed
