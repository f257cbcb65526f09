"""Webhooks in the store: tenants' signing secrets, endpoints that answered 410, and the
delivery log with its state machine.

    pending --claim--> delivering --2xx-------------------> delivered
       ^                   |------retryable, schedule left--> pending (next_attempt_at)
       |                   '------410, refused, schedule over-> failed
       '--redeliver (a new schedule) / sweep (lost message or dead worker)

Each delivery message names the attempt it is for; claiming it is a conditional update on
that number, so a duplicated or late message changes nothing. Secrets are sealed under the
tenant's data key (``dispatcher.vault``) and leave this module only through ``live_secrets``.
"""

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import ColumnElement
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, or_, select, update

from dispatcher.db import utcnow
from dispatcher.ids import new_id
from dispatcher.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookSecret
from dispatcher.store.credentials import data_key
from dispatcher.vault import Keyring, VaultError
from dispatcher.webhooks import new_secret
from schemas.webhooks import (
    DeliveryAttemptPublic,
    DeliveryPublic,
    WebhookSecretCreated,
    WebhookSecretPublic,
)

# --- secrets ------------------------------------------------------------------------------


def create_secret(session: Session, keyring: Keyring, tenant_id: str) -> WebhookSecretCreated:
    """A new secret for the tenant, signing beside any others until they expire."""
    secret, secret_id = new_secret(), new_id("whs")
    key = data_key(session, keyring, tenant_id, create=True)
    nonce = os.urandom(12)
    row = WebhookSecret(
        id=secret_id,
        tenant_id=tenant_id,
        nonce=nonce,
        ciphertext=AESGCM(key).encrypt(nonce, secret.encode(), _aad(tenant_id, secret_id)),
        fingerprint=hashlib.sha256(secret.encode()).hexdigest()[:8],
    )
    session.add(row)
    session.flush()
    return WebhookSecretCreated(**_secret_public(row).model_dump(), secret=secret)


def rotate_secrets(
    session: Session, keyring: Keyring, tenant_id: str, expire_others_after_s: float
) -> WebhookSecretCreated:
    """A new secret; the others keep signing for ``expire_others_after_s``, then stop."""
    created = create_secret(session, keyring, tenant_id)
    until = utcnow() + timedelta(seconds=expire_others_after_s)
    session.exec(
        update(WebhookSecret)
        .where(*_live_secret(tenant_id), col(WebhookSecret.id) != created.id)
        .where(or_(col(WebhookSecret.expires_at).is_(None), col(WebhookSecret.expires_at) > until))
        .values(expires_at=until)
    )
    return created


def list_secrets(session: Session, tenant_id: str) -> list[WebhookSecretPublic]:
    """The secrets that sign now, newest first."""
    return [_secret_public(row) for row in _live_rows(session, tenant_id)]


def delete_secret(session: Session, tenant_id: str, secret_id: str) -> bool:
    """Stop signing with it at once; False if the tenant has no such live secret."""
    result = session.exec(
        update(WebhookSecret)
        .where(*_live_secret(tenant_id), col(WebhookSecret.id) == secret_id)
        .values(expires_at=utcnow())
    )
    return result.rowcount == 1


def has_live_secret(session: Session, tenant_id: str) -> bool:
    return (
        session.exec(select(WebhookSecret.id).where(*_live_secret(tenant_id))).first() is not None
    )


def live_secrets(session: Session, keyring: Keyring, tenant_id: str) -> list[str]:
    """The secrets that sign now, decrypted, newest first. ``VaultError`` names ids only."""
    rows = _live_rows(session, tenant_id)
    if not rows:
        return []
    key = data_key(session, keyring, tenant_id, create=False)
    opened = []
    for row in rows:
        try:
            plain = AESGCM(key).decrypt(row.nonce, row.ciphertext, _aad(tenant_id, row.id))
        except InvalidTag:
            raise VaultError(f"webhook secret {row.id} does not decrypt as its own") from None
        opened.append(plain.decode())
    return opened


def _aad(tenant_id: str, secret_id: str) -> bytes:
    return json.dumps(["v1", "webhook-secret", tenant_id, secret_id]).encode()


def _live_secret(tenant_id: str) -> list[ColumnElement[bool]]:
    live = or_(col(WebhookSecret.expires_at).is_(None), col(WebhookSecret.expires_at) > utcnow())
    return [col(WebhookSecret.tenant_id) == tenant_id, live]


def _live_rows(session: Session, tenant_id: str) -> list[WebhookSecret]:
    query = select(WebhookSecret).where(*_live_secret(tenant_id))
    return list(session.exec(query.order_by(col(WebhookSecret.id).desc())).all())


def _secret_public(row: WebhookSecret) -> WebhookSecretPublic:
    return WebhookSecretPublic.model_validate(row, from_attributes=True)


# --- endpoints ----------------------------------------------------------------------------


def _url_hash(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def endpoint_disabled(session: Session, tenant_id: str, url: str) -> bool:
    return session.get(WebhookEndpoint, (tenant_id, _url_hash(url))) is not None


def disable_endpoint(session: Session, tenant_id: str, url: str, reason: str) -> None:
    row = {"tenant_id": tenant_id, "url_hash": _url_hash(url), "url": url, "reason": reason}
    session.exec(_insert(session, WebhookEndpoint).values(row | {"disabled_at": utcnow()}))


def enable_endpoint(session: Session, tenant_id: str, url: str) -> None:
    row = session.get(WebhookEndpoint, (tenant_id, _url_hash(url)))
    if row is not None:
        session.delete(row)


def _insert(session: Session, table: type[WebhookEndpoint] | type[WebhookDelivery]) -> "Insert":
    """An INSERT that skips rows whose unique key is taken."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table).on_conflict_do_nothing()


Insert = postgresql.Insert | sqlite.Insert


# --- deliveries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NewDelivery:
    """An event a run's webhook subscribed to, read from the outbox entry ``source``."""

    source: str
    run_id: str
    tenant_id: str
    event: str
    url: str
    body: bytes


@dataclass(frozen=True)
class Job:
    """A claimed attempt of a delivery: ``number`` overall, ``in_round`` within its schedule."""

    delivery_id: str
    tenant_id: str
    run_id: str
    url: str
    body: bytes = field(repr=False)
    number: int
    in_round: int


def add_deliveries(session: Session, new: Sequence[NewDelivery]) -> list[tuple[str, int]]:
    """Insert each delivery once (a source already seen is skipped); return (id, next attempt
    number) of those still pending, for the caller to enqueue."""
    for item in new:
        row = {
            "id": new_id("msg"),
            "source": item.source,
            "run_id": item.run_id,
            "tenant_id": item.tenant_id,
            "event": item.event,
            "url": item.url,
            "body": item.body,
            "status": "pending",
            "attempt_count": 0,
            "round_start": 0,
            "next_attempt_at": utcnow(),
            "created_at": utcnow(),
        }
        session.exec(_insert(session, WebhookDelivery).values(row))
    rows = session.exec(
        select(WebhookDelivery.id, WebhookDelivery.attempt_count).where(
            col(WebhookDelivery.source).in_([item.source for item in new]),
            col(WebhookDelivery.status) == "pending",
        )
    ).all()
    return [(delivery_id, count + 1) for delivery_id, count in rows]


def claim(session: Session, delivery_id: str, number: int, lease_s: float) -> Job | None:
    """Take attempt ``number`` of a pending delivery; None if that attempt is not due."""
    row = session.exec(
        update(WebhookDelivery)
        .where(col(WebhookDelivery.id) == delivery_id, col(WebhookDelivery.status) == "pending")
        .where(col(WebhookDelivery.attempt_count) == number - 1)
        .values(
            status="delivering",
            attempt_count=number,
            next_attempt_at=utcnow() + timedelta(seconds=lease_s),
        )
        .returning(
            col(WebhookDelivery.tenant_id),
            col(WebhookDelivery.run_id),
            col(WebhookDelivery.url),
            col(WebhookDelivery.body),
            col(WebhookDelivery.round_start),
        )
    ).first()
    if row is None:
        return None
    tenant_id, run_id, url, body, round_start = row
    return Job(delivery_id, tenant_id, run_id, url, body, number, number - round_start)


@dataclass(frozen=True)
class Attempted:
    """What one attempt found, and the delivery's state after it."""

    status_code: int | None
    error: str | None
    latency_ms: float
    started_at: datetime
    next_status: str
    retry_at: datetime | None = None


def record(session: Session, job: Job, attempted: Attempted) -> bool:
    """Log the attempt and move the delivery on, if this attempt still holds it."""
    done = attempted.next_status == "delivered"
    result = session.exec(
        update(WebhookDelivery)
        .where(col(WebhookDelivery.id) == job.delivery_id)
        .where(col(WebhookDelivery.status) == "delivering")
        .where(col(WebhookDelivery.attempt_count) == job.number)
        .values(
            status=attempted.next_status,
            next_attempt_at=attempted.retry_at,
            last_status_code=attempted.status_code,
            last_error=attempted.error,
            delivered_at=utcnow() if done else None,
        )
    )
    if result.rowcount != 1:
        return False
    session.add(
        WebhookAttempt(
            delivery_id=job.delivery_id,
            number=job.number,
            status_code=attempted.status_code,
            error=attempted.error,
            latency_ms=attempted.latency_ms,
            started_at=attempted.started_at,
        )
    )
    return True


def redeliver(
    session: Session, tenant_id: str, run_id: str, delivery_id: str
) -> DeliveryPublic | None:
    """Start a new retry schedule now (the endpoint is enabled again); None if the tenant has no
    such delivery or an attempt of it is under way. The caller enqueues the next attempt."""
    result = session.exec(
        update(WebhookDelivery)
        .where(col(WebhookDelivery.id) == delivery_id, col(WebhookDelivery.run_id) == run_id)
        .where(col(WebhookDelivery.tenant_id) == tenant_id)
        .where(col(WebhookDelivery.status) != "delivering")
        .values(
            status="pending",
            round_start=col(WebhookDelivery.attempt_count),
            next_attempt_at=utcnow(),
        )
    )
    if result.rowcount != 1:
        return None
    row = session.get(WebhookDelivery, delivery_id, populate_existing=True)
    assert row is not None
    enable_endpoint(session, tenant_id, row.url)
    return delivery_public(row)


def sweep(session: Session, grace_s: float, limit: int = 500) -> list[tuple[str, int]]:
    """Take back deliveries overdue by ``grace_s``: a lost message, or a worker that died
    mid-attempt. Returns (id, next attempt number) of each one taken, for the caller to enqueue."""
    now = utcnow()
    overdue = session.exec(
        select(WebhookDelivery.id, WebhookDelivery.status, WebhookDelivery.attempt_count)
        .where(col(WebhookDelivery.status).in_(("pending", "delivering")))
        .where(col(WebhookDelivery.next_attempt_at) < now - timedelta(seconds=grace_s))
        .limit(limit)
    ).all()
    taken = []
    for delivery_id, status, count in overdue:
        result = session.exec(
            update(WebhookDelivery)
            .where(col(WebhookDelivery.id) == delivery_id, col(WebhookDelivery.status) == status)
            .where(col(WebhookDelivery.attempt_count) == count)
            .values(status="pending", next_attempt_at=now + timedelta(seconds=grace_s))
        )
        if result.rowcount == 1:
            taken.append((delivery_id, count + 1))
    return taken


def deliveries_of(session: Session, tenant_id: str, run_id: str) -> list[DeliveryPublic]:
    """A run's deliveries, oldest first, each with its attempts."""
    rows = session.exec(
        select(WebhookDelivery)
        .where(col(WebhookDelivery.run_id) == run_id, col(WebhookDelivery.tenant_id) == tenant_id)
        .order_by(col(WebhookDelivery.created_at), col(WebhookDelivery.source))
    ).all()
    attempts: dict[str, list[DeliveryAttemptPublic]] = {row.id: [] for row in rows}
    if rows:
        found = session.exec(
            select(WebhookAttempt)
            .where(col(WebhookAttempt.delivery_id).in_(list(attempts)))
            .order_by(col(WebhookAttempt.number))
        )
        for attempt in found:
            public = DeliveryAttemptPublic.model_validate(attempt, from_attributes=True)
            attempts[attempt.delivery_id].append(public)
    return [delivery_public(row, attempts[row.id]) for row in rows]


def delivery_public(
    row: WebhookDelivery, attempts: list[DeliveryAttemptPublic] | None = None
) -> DeliveryPublic:
    fields = row.model_dump(exclude={"body", "source", "round_start", "tenant_id"})
    return DeliveryPublic.model_validate(fields | {"attempts": attempts or []})
