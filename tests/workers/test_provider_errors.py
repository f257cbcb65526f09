from datetime import UTC, datetime

import pytest

from workers.providers.errors import class_for_status, parse_retry_after


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (429, "rate_limited"), (401, "auth_failed"), (403, "auth_failed"), (408, "timeout"),
        (504, "timeout"), (503, "overloaded"), (529, "overloaded"), (500, "provider_error"),
        (502, "provider_error"), (400, "invalid_request"), (404, "invalid_request"),
    ],
)  # fmt: skip
def test_a_status_alone_maps_to_its_error_class(status: int, error_class: str) -> None:
    assert class_for_status(status) == error_class


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
