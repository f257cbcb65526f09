"""Credentials in the vault, by owner and name.

An owner is a tenant id, or ``PLATFORM_OWNER`` for the platform's shared credentials: every
function here serves both. Secrets go in as a ``CredentialSecret`` and come out only through
``load_secret``; everything else returns ``CredentialPublic`` (metadata and a fingerprint).
"""

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Connection, bindparam, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, func, select, update

from dispatcher import vault
from dispatcher.db import utcnow
from dispatcher.ids import new_id
from dispatcher.models import Credential, DataKey
from dispatcher.vault import Keyring, Sealed, VaultError, WrappedKey
from schemas.credentials import CredentialPublic, CredentialSecret

#: ``last_used_at`` is written at most this often per credential, not on every run.
TOUCH_EVERY = timedelta(seconds=60)
#: Longer health reasons (a provider's error message) are cut to this.
MAX_REASON = 200


def put_credential(
    session: Session, keyring: Keyring, owner_id: str, name: str, secret: CredentialSecret
) -> CredentialPublic:
    """Create ``name``, or replace its secret (sealed afresh, marked healthy again).

    Two concurrent creations of one new name: the second fails on the unique index.
    """
    dek = data_key(session, keyring, owner_id, create=True)
    live = _live(session, owner_id, name)
    if live is not None:
        replaced = session.exec(
            update(Credential)
            .where(col(Credential.id) == live.id, col(Credential.deleted_at).is_(None))
            .values(**_sealed(dek, owner_id, live.id, secret))
        )
        if replaced.rowcount == 1:
            session.refresh(live)
            return _public(live)
    credential_id = new_id("cred")
    sealed = _sealed(dek, owner_id, credential_id, secret)
    row = Credential(id=credential_id, owner_id=owner_id, name=name, **sealed)
    session.add(row)
    session.flush()
    return _public(row)


def get_credential(session: Session, owner_id: str, name: str) -> CredentialPublic | None:
    row = _live(session, owner_id, name)
    return None if row is None else _public(row)


def list_credentials(session: Session, owner_id: str) -> list[CredentialPublic]:
    rows = session.exec(
        select(Credential).where(*_live_where(owner_id)).order_by(col(Credential.name))
    )
    return [_public(row) for row in rows]


def delete_credential(session: Session, owner_id: str, name: str) -> bool:
    """Revoke at once: erase the ciphertext and free the name. False if there was none."""
    result = session.exec(
        update(Credential)
        .where(*_live_where(owner_id, name))
        .values(deleted_at=utcnow(), nonce=None, ciphertext=None)
    )
    return result.rowcount == 1


def load_secret(
    session: Session, keyring: Keyring, owner_id: str, name: str
) -> CredentialSecret | None:
    """The decrypted secret for a worker; None if revoked or never stored.

    Raises ``VaultError`` when the row does not decrypt as its own (copied, tampered, key gone).
    """
    row = _live(session, owner_id, name)
    if row is None:
        return None
    if row.nonce is None or row.ciphertext is None:
        raise VaultError(f"credential {row.id} has no ciphertext")
    dek = data_key(session, keyring, owner_id, create=False)
    secret = vault.unseal(dek, owner_id, row.id, row.provider, Sealed(row.nonce, row.ciphertext))
    _touch(session, row)
    return secret


def mark_unhealthy(session: Session, owner_id: str, name: str, reason: str) -> bool:
    """Flag a credential a provider refused; True only if it was healthy until now."""
    params = {"owner": owner_id, "credential": name, "reason": reason[:MAX_REASON]}
    return session.connection().execute(_HARM, params).rowcount == 1


def mark_all_healthy(connection: Connection, keys: Sequence[tuple[str, str]]) -> list[str]:
    """Clear the flag of each credential (owner id, name) in one statement; the owners of
    those that were unhealthy until now (one entry per credential)."""
    if not keys:
        return []
    params = {"owners": [owner for owner, _ in keys], "keys": list(keys)}
    return list(connection.execute(_HEAL, params).scalars())


class Rotation(NamedTuple):
    """What ``rotate`` did: how many data keys it re-wrapped, and the owners whose data key
    the keyring cannot unwrap (left as they were; keep their KEK until they are dealt with)."""

    rotated: int
    unreadable: list[str]


def rotate(session: Session, keyring: Keyring) -> Rotation:
    """Re-wrap every data key not under the active KEK. Secrets are not re-encrypted.

    Each row is a conditional update, so it runs beside live traffic and beside another
    rotation. Order: give every process the new keyring (old key kept, new one active),
    rotate, check ``kek_ids_in_use``, then drop the old key.
    """
    stale = session.exec(select(DataKey).where(col(DataKey.kek_id) != keyring.active)).all()
    rotated, unreadable = 0, []
    for row in stale:
        old = WrappedKey(row.kek_id, row.wrapped_key)
        try:
            new = keyring.wrap(row.owner_id, keyring.unwrap(row.owner_id, old))
        except VaultError:
            unreadable.append(row.owner_id)
            continue
        result = session.exec(
            update(DataKey)
            .where(col(DataKey.owner_id) == row.owner_id, col(DataKey.kek_id) == old.kek_id)
            .where(col(DataKey.wrapped_key) == old.wrapped)
            .values(kek_id=new.kek_id, wrapped_key=new.wrapped, rotated_at=utcnow())
        )
        rotated += result.rowcount
    return Rotation(rotated, unreadable)


def kek_ids_in_use(session: Session) -> dict[str, int]:
    """KEK id -> how many data keys it wraps: a KEK absent here can leave the keyring."""
    rows = session.exec(select(DataKey.kek_id, func.count()).group_by(col(DataKey.kek_id)))
    return dict(rows.all())


def data_key(session: Session, keyring: Keyring, owner_id: str, *, create: bool) -> bytes:
    """The owner's data key, unwrapped (created first when ``create`` and there is none)."""
    row = session.get(DataKey, owner_id)
    if row is None and create:
        _insert_data_key(session, keyring, owner_id)
        row = session.get(DataKey, owner_id)
    if row is None:
        raise VaultError(f"{owner_id} has no data key")
    return keyring.unwrap(owner_id, WrappedKey(row.kek_id, row.wrapped_key))


def _insert_data_key(session: Session, keyring: Keyring, owner_id: str) -> None:
    """Insert unless a concurrent caller already has: the first data key stays."""
    kek_id, wrapped = keyring.wrap(owner_id, vault.new_data_key())
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    row = {"owner_id": owner_id, "kek_id": kek_id, "wrapped_key": wrapped, "created_at": utcnow()}
    session.exec(insert(DataKey).values(row).on_conflict_do_nothing())


def _sealed(
    data_key: bytes, owner_id: str, credential_id: str, secret: CredentialSecret
) -> dict[str, Any]:
    nonce, ciphertext = vault.seal(data_key, owner_id, credential_id, secret)
    return {
        "provider": secret.provider,
        "nonce": nonce,
        "ciphertext": ciphertext,
        "fingerprint": vault.fingerprint(secret),
        "healthy": True,
        "health_reason": None,
    }


def _live_where(owner_id: str, name: str | None = None) -> list[ColumnElement[bool]]:
    where = [col(Credential.owner_id) == owner_id, col(Credential.deleted_at).is_(None)]
    if name is not None:
        where.append(col(Credential.name) == name)
    return where


def _live(session: Session, owner_id: str, name: str) -> Credential | None:
    return session.exec(select(Credential).where(*_live_where(owner_id, name))).first()


def _touch(session: Session, row: Credential) -> None:
    now = utcnow()
    if row.last_used_at is not None and now - row.last_used_at < TOUCH_EVERY:
        return
    session.exec(
        update(Credential)
        .where(col(Credential.id) == row.id, col(Credential.deleted_at).is_(None))
        .values(last_used_at=now)
    )


_CREDENTIALS = Credential.__table__  # type: ignore[attr-defined]
#: A credential a provider refused (for quota or auth), if it was healthy.
_HARM = (
    update(_CREDENTIALS)
    .where(
        _CREDENTIALS.c.owner_id == bindparam("owner"),
        _CREDENTIALS.c.name == bindparam("credential"),
        _CREDENTIALS.c.deleted_at.is_(None),
        _CREDENTIALS.c.healthy.is_(True),
    )
    .values(healthy=False, health_reason=bindparam("reason"))
)


#: After a batch of attempts, every credential that just worked, in one statement: the owner ids
#: alone lead SQLite to the index (it finds rows by a row value only by scanning).
_HEAL = (
    update(_CREDENTIALS)
    .where(
        _CREDENTIALS.c.owner_id.in_(bindparam("owners", expanding=True)),
        tuple_(_CREDENTIALS.c.owner_id, _CREDENTIALS.c.name).in_(bindparam("keys", expanding=True)),
        _CREDENTIALS.c.deleted_at.is_(None),
        _CREDENTIALS.c.healthy.is_(False),
    )
    .values(healthy=True, health_reason=None)
    .returning(_CREDENTIALS.c.owner_id)
)


def _public(row: Credential) -> CredentialPublic:
    return CredentialPublic.model_validate(row, from_attributes=True)
