"""Request and response bodies of the runs API."""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from schemas.errors import ErrorDetail
from schemas.inference import Usage
from schemas.routing import RoutingOverride
from schemas.webhooks import WebhookSpec, webhook_from_url

RunStatus = Literal["queued", "running", "succeeded", "failed", "canceled", "expired"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "canceled", "expired"})
CredentialKind = Literal["byok", "shared"]

#: Fields a client may not set: the server owns them.
SERVER_OWNED_FIELDS: frozenset[str] = frozenset(
    {"id", "tenant_id", "status", "cost", "output", "usage", "attempts", "provider", "created_at"}
)


class RunCreate(BaseModel):
    """``POST /v1/run``. Unknown fields are refused, server-owned ones by name."""

    model_config = ConfigDict(extra="forbid")

    app: str = Field(
        min_length=3, max_length=200, pattern=r"^[a-z0-9][a-z0-9._-]*(/[A-Za-z0-9._:@-]+)+$"
    )
    input: dict[str, Any]
    #: ``{"url", "events"}``, or just the URL (then: the terminal events).
    webhook: Annotated[WebhookSpec | None, BeforeValidator(webhook_from_url)] = None
    metadata: dict[str, str] | None = Field(default=None, max_length=32)
    #: Narrows the tenant's routing for this run (see ``RoutingOverride``).
    routing: RoutingOverride | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_server_owned(cls, data: Any) -> Any:
        if isinstance(data, dict):
            owned = sorted(SERVER_OWNED_FIELDS & data.keys())
            if owned:
                raise ValueError(f"{', '.join(owned)}: set by the server, not by a request")
        return data


class RunUrls(BaseModel):
    self: str


class RunAccepted(BaseModel):
    id: str
    status: RunStatus
    app: str
    created_at: datetime
    urls: RunUrls


class RunError(BaseModel):
    code: str
    message: str
    provider: str | None = None
    status_code: int | None = None


class ProviderJob(BaseModel):
    """A job submitted to a provider's queue (fal): its handle, and where it stands."""

    app: str
    request_id: str
    status: str
    queue_position: int | None = None
    #: Polls that found it still queued or running.
    polls: int = 0
    submitted_at: datetime
    #: While the run waits on it: when it is polled next.
    next_poll_at: datetime | None = None
    status_url: str
    response_url: str
    cancel_url: str


class AttemptPublic(BaseModel):
    number: int
    hop: int
    provider: str
    model: str | None
    credential_kind: CredentialKind
    credential_name: str | None
    outcome: Literal["succeeded", "failed"]
    status_code: int | None
    error_class: str | None
    message: str | None
    retry_after_s: float | None
    latency_ms: float
    usage: Usage | None
    cost_usd: float
    #: The provider's job this attempt submitted and polled (fal), if any.
    provider_job: ProviderJob | None = None
    started_at: datetime
    finished_at: datetime


class Timings(BaseModel):
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queued_ms: float | None
    total_ms: float | None


class RunPublic(BaseModel):
    id: str
    app: str
    status: RunStatus
    output: dict[str, Any] | None
    error: RunError | None
    usage: Usage | None
    #: The sum over the run's attempts, from the price table.
    cost_usd: float
    provider: str | None
    model: str | None
    credential_kind: CredentialKind | None
    credential_name: str | None
    metadata: dict[str, str] | None
    #: The tenant's routing config version the run was routed with (None: the platform default).
    routing_version: int | None
    policy: str | None
    #: The provider's job the running attempt waits on (fal), if any.
    pending_job: ProviderJob | None = None
    attempts: list[AttemptPublic]
    timings: Timings
    created_at: datetime


class RunPage(BaseModel):
    data: list[RunPublic]
    next_cursor: str | None


#: The most runs one ``POST /v1/runs/batch`` may carry.
MAX_BATCH = 1000


class BatchCreate(BaseModel):
    """``POST /v1/runs/batch``: each item is a ``RunCreate``, validated on its own."""

    model_config = ConfigDict(extra="forbid")

    runs: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH)


class BatchItem(BaseModel):
    """One item's outcome, at its ``index`` in the request: an id, or an error."""

    index: int
    id: str | None = None
    status: RunStatus | None = None
    error: ErrorDetail | None = None


class BatchAccepted(BaseModel):
    data: list[BatchItem]
    accepted: int
    rejected: int
