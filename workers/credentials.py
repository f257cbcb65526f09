"""Which credential a hop uses, loaded and decrypted for one attempt.

    byok:<name>  the tenant's own credential <name>
    shared       the platform's credential registered for the hop's provider
                 (none needed for the built-in simulated provider)

A problem is returned as the ``ProviderError`` the attempt records, so a revoked or
unhealthy key moves the run along its chain like any refusal. A credential that does
not decrypt as its own fails the run at once: the vault fails closed.
"""

from sqlmodel import Session

from dispatcher.store import credentials as store
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


def load_for_hop(session: Session, keyring: Keyring, tenant_id: str, hop: Hop) -> Loaded:
    if hop.provider in KEYLESS:
        return None
    owner, name = owner_and_name(tenant_id, hop)
    try:
        secret = store.load_secret(session, keyring, owner, name)
    except VaultError as exc:
        return ProviderError("invalid_request", f"credential cannot be used: {exc}")
    if secret is None:
        missing = f"credential {name!r}" if owner != PLATFORM_OWNER else "shared credential"
        return ProviderError("auth_failed", f"{missing} for {hop.provider} is missing or revoked")
    if secret.provider != hop.provider:
        return ProviderError(
            "auth_failed", f"credential {name!r} is for {secret.provider}, not {hop.provider}"
        )
    return secret


def note_health(session: Session, tenant_id: str, hop: Hop, error: ProviderError | None) -> None:
    """A tenant credential refused for quota or auth is unhealthy until it next succeeds."""
    if hop.credential_name is None:
        return
    if error is None:
        store.mark_healthy(session, tenant_id, hop.credential_name)
    elif error.error_class in CREDENTIAL_CLASSES:
        reason = f"{error.error_class}: {error.message}"
        store.mark_unhealthy(session, tenant_id, hop.credential_name, reason)
