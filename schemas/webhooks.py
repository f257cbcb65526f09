"""Run events and webhooks: what a run subscribes to, webhook secrets, and the delivery log."""

from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator

RunEventType = Literal[
    "queued", "running", "attempt_failed", "fell_back", "waiting", "succeeded", "failed", "canceled"
]
RUN_EVENT_TYPES: tuple[str, ...] = get_args(RunEventType)
TERMINAL_EVENTS: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})
#: What a webhook given as a plain URL subscribes to.
DEFAULT_WEBHOOK_EVENTS: tuple[RunEventType, ...] = ("succeeded", "failed", "canceled")

DeliveryStatus = Literal["pending", "delivering", "delivered", "failed"]


class WebhookSpec(BaseModel):
    """A run's webhook: where to deliver, and which of its events. A plain URL string is read
    as ``{"url": ...}`` with the terminal events."""

    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl
    events: list[RunEventType] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS), min_length=1
    )

    @field_validator("events")
    @classmethod
    def _once_each(cls, events: list[RunEventType]) -> list[RunEventType]:
        return list(dict.fromkeys(events))


def webhook_from_url(value: Any) -> Any:
    """``"https://..."`` -> ``{"url": "https://..."}``; anything else as it is."""
    return {"url": value} if isinstance(value, str) else value


class WebhookSecretPublic(BaseModel):
    """A signing secret as listed: never the secret itself."""

    id: str
    #: The first 8 hex digits of the secret's SHA-256, to tell secrets apart.
    fingerprint: str
    created_at: datetime
    #: When it stops signing (set by a rotation); None: until rotated or deleted.
    expires_at: datetime | None


class WebhookSecretCreated(WebhookSecretPublic):
    """The answer that creates a secret: the only one that carries it."""

    secret: str


class WebhookSecretList(BaseModel):
    data: list[WebhookSecretPublic]


class RotateSecrets(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: The secrets in use keep signing this long beside the new one (default: a day).
    expire_others_after_s: float = Field(default=86_400.0, ge=0, le=30 * 86_400)


class DeliveryAttemptPublic(BaseModel):
    number: int
    #: The receiver's HTTP status; None when no answer came (network error, timeout).
    status_code: int | None
    error: str | None
    latency_ms: float
    started_at: datetime


class DeliveryPublic(BaseModel):
    #: The ``webhook-id`` header: the same on every attempt of this delivery.
    id: str
    run_id: str
    event: RunEventType
    url: str
    status: DeliveryStatus
    attempt_count: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    attempts: list[DeliveryAttemptPublic]


class DeliveryList(BaseModel):
    data: list[DeliveryPublic]
