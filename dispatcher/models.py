"""The results store's tables. Repository functions in ``dispatcher.store`` are their only users."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from dispatcher.db import UTCDateTime, utcnow
from schemas.routing import DEFAULT_MAX_ATTEMPTS


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=nullable))


def _time(*, required: bool = False, index: bool = False) -> Any:
    column: Column[datetime] = Column(UTCDateTime(), nullable=not required, index=index)
    if required:
        return Field(default_factory=utcnow, sa_column=column)
    return Field(default=None, sa_column=column)


class Tenant(SQLModel, table=True):
    id: str = Field(primary_key=True)
    name: str = Field(unique=True)
    created_at: datetime = _time(required=True)


class ApiKey(SQLModel, table=True):
    id: str = Field(primary_key=True)
    tenant_id: str = Field(foreign_key="tenant.id", index=True)
    key_hash: str = Field(unique=True)
    prefix: str
    name: str = ""
    created_at: datetime = _time(required=True)
    revoked_at: datetime | None = _time()


class Run(SQLModel, table=True):
    __table_args__ = (
        Index("ix_run_tenant_id_id", "tenant_id", "id"),
        Index("ix_run_status_lease", "status", "lease_expires_at"),
    )

    id: str = Field(primary_key=True)
    tenant_id: str = Field(foreign_key="tenant.id")
    app: str
    status: str
    input: dict[str, Any] = _json(nullable=False)
    meta: dict[str, str] | None = _json()
    webhook: str | None = None
    chain: list[dict[str, Any]] = _json(nullable=False)
    hop_index: int = 0
    attempt_count: int = 0
    output: dict[str, Any] | None = _json()
    error: dict[str, Any] | None = _json()
    usage: dict[str, Any] | None = _json()
    provider: str | None = None
    model: str | None = None
    credential_kind: str | None = None
    credential_name: str | None = None
    #: How the run was routed: the tenant's config version (None: the platform default),
    #: the policy, and the bounds over its whole chain.
    routing_version: int | None = None
    policy: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    deadline_at: datetime | None = _time()
    claim_token: str | None = None
    lease_expires_at: datetime | None = _time()
    #: A job submitted to a provider's queue (fal) that the run's attempt waits on: its handle
    #: and where it stands. Set while the attempt waits (the run is ``running``, unclaimed).
    pending_job: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON(none_as_null=True), nullable=True)
    )
    created_at: datetime = _time(required=True)
    started_at: datetime | None = _time()
    finished_at: datetime | None = _time()


class Attempt(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("run_id", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", index=True)
    number: int
    hop: int
    provider: str
    model: str | None = None
    credential_kind: str
    credential_name: str | None = None
    outcome: str
    status_code: int | None = None
    error_class: str | None = None
    message: str | None = None
    retry_after_s: float | None = None
    latency_ms: float
    usage: dict[str, Any] | None = _json()
    cost_usd: float = 0.0
    #: The provider's job this attempt submitted and polled (fal: request id and URLs).
    provider_job: dict[str, Any] | None = _json()
    started_at: datetime = _time(required=True)
    finished_at: datetime = _time(required=True)


class UsageEvent(SQLModel, table=True):
    """Exactly one per attempt: ``attempt_id`` is unique."""

    id: int | None = Field(default=None, primary_key=True)
    attempt_id: int = Field(foreign_key="attempt.id", unique=True)
    tenant_id: str = Field(index=True)
    run_id: str
    app: str
    provider: str
    model: str | None = None
    credential_kind: str
    input_tokens: int = 0
    output_tokens: int = 0
    units: float = 0
    latency_ms: float
    outcome: str
    cost_usd: float = 0.0
    billed_to: str
    created_at: datetime = _time(required=True, index=True)


def _bytes(nullable: bool = False) -> Any:
    return Field(default=None, sa_column=Column(LargeBinary, nullable=nullable))


class DataKey(SQLModel, table=True):
    """An owner's data key (a tenant's, or the platform's), wrapped by the KEK ``kek_id``."""

    owner_id: str = Field(primary_key=True)
    kek_id: str
    wrapped_key: bytes = _bytes()
    created_at: datetime = _time(required=True)
    rotated_at: datetime | None = _time()


class Credential(SQLModel, table=True):
    """A provider credential sealed under its owner's data key. A revoked one keeps its row
    (``deleted_at`` set, ciphertext erased) and frees its name: names are unique among live rows.
    """

    __table_args__ = (
        Index(
            "uq_credential_owner_name_live",
            "owner_id",
            "name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: str = Field(primary_key=True)
    owner_id: str
    name: str
    provider: str
    nonce: bytes | None = _bytes(nullable=True)
    ciphertext: bytes | None = _bytes(nullable=True)
    fingerprint: str
    healthy: bool = True
    health_reason: str | None = None
    created_at: datetime = _time(required=True)
    last_used_at: datetime | None = _time()
    deleted_at: datetime | None = _time()


class RoutingVersion(SQLModel, table=True):
    """A tenant's routing config, append-only: each save adds the next version."""

    tenant_id: str = Field(foreign_key="tenant.id", primary_key=True)
    version: int = Field(primary_key=True)
    config: dict[str, Any] = _json(nullable=False)
    created_at: datetime = _time(required=True)


class IdempotencyKey(SQLModel, table=True):
    """A tenant's ``Idempotency-Key`` and the run it created; it counts for a day."""

    tenant_id: str = Field(primary_key=True)
    key: str = Field(primary_key=True, max_length=255)
    #: SHA-256 of the request body as validated: the same key with another body is refused.
    body_hash: str
    run_id: str
    created_at: datetime = _time(required=True, index=True)


class WebhookSecret(SQLModel, table=True):
    """A tenant's webhook signing secret, sealed under the tenant's data key."""

    id: str = Field(primary_key=True)
    tenant_id: str = Field(foreign_key="tenant.id", index=True)
    nonce: bytes = _bytes()
    ciphertext: bytes = _bytes()
    fingerprint: str
    created_at: datetime = _time(required=True)
    #: It stops signing at this time (a rotation or a delete sets it); None: no end yet.
    expires_at: datetime | None = _time()


class WebhookEndpoint(SQLModel, table=True):
    """A tenant's webhook URL that answered ``410 Gone``: nothing goes there until a redeliver."""

    tenant_id: str = Field(primary_key=True)
    url_hash: str = Field(primary_key=True)
    url: str
    reason: str
    disabled_at: datetime = _time(required=True)


class WebhookDelivery(SQLModel, table=True):
    """One event of one run for its webhook. ``id`` is the ``webhook-id`` of every attempt."""

    __table_args__ = (Index("ix_webhookdelivery_status_due", "status", "next_attempt_at"),)

    id: str = Field(primary_key=True)
    run_id: str = Field(index=True)
    tenant_id: str
    event: str
    url: str
    #: The exact bytes signed and sent, the same on every attempt.
    body: bytes = _bytes()
    #: The outbox entry it came from: reading that entry twice makes no second delivery.
    source: str = Field(unique=True)
    status: str
    attempt_count: int = 0
    #: ``attempt_count`` when the current retry schedule began (a redeliver starts a new one).
    round_start: int = 0
    next_attempt_at: datetime | None = _time()
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime = _time(required=True)
    delivered_at: datetime | None = _time()


class WebhookAttempt(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("delivery_id", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: str = Field(foreign_key="webhookdelivery.id", index=True)
    number: int
    status_code: int | None = None
    error: str | None = None
    latency_ms: float
    started_at: datetime = _time(required=True)
