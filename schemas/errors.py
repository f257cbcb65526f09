"""The error vocabulary: normalized provider error classes and the API's error body.

Every provider failure is translated, once, at the adapter boundary into one of
``ERROR_CLASSES``; the fallback decision reads only the class, never a provider's
own spelling.
"""

from typing import Any, Literal

from pydantic import BaseModel

ErrorClass = Literal[
    "rate_limited",
    "quota_exhausted",
    "overloaded",
    "provider_error",
    "timeout",
    "connection_error",
    "auth_failed",
    "invalid_request",
]

#: Error classes after which the next hop of the chain is tried.
NEXT_HOP_CLASSES: frozenset[str] = frozenset(
    {"rate_limited", "overloaded", "provider_error", "timeout", "connection_error"}
)
#: Error classes that also mark a tenant's own credential unhealthy.
CREDENTIAL_CLASSES: frozenset[str] = frozenset({"quota_exhausted", "auth_failed"})


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    """What every 4xx and 5xx answer of the API carries."""

    error: ErrorDetail
