"""Provider failures, translated once at each adapter's boundary.

    ProviderError(error_class, message, status_code, retry_after_s)
      error_class is one of schemas.errors.ErrorClass:
        rate_limited | quota_exhausted | overloaded | provider_error
        | timeout | connection_error | auth_failed | invalid_request

Adapters raise nothing else for a failed call; the executor turns a timeout of the
hop itself into ``timeout`` and any other escaped exception into ``provider_error``.
"""

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from schemas.errors import ErrorClass


class ProviderError(Exception):
    def __init__(
        self,
        error_class: ErrorClass,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.error_class: ErrorClass = error_class
        self.message = message
        self.status_code = status_code
        self.retry_after_s = retry_after_s


def class_for_status(status: int) -> ErrorClass:
    """The error class an HTTP status means when the body says nothing more precise."""
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth_failed"
    if status in (408, 504):
        return "timeout"
    if status in (503, 529):
        return "overloaded"
    if status >= 500:
        return "provider_error"
    return "invalid_request"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
