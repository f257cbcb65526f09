"""A fake Anthropic Messages API: ``POST /v1/messages``.

It checks what the real API checks first: ``x-api-key`` (missing or wrong: 401
``authentication_error``; with ``fake.echo_key`` the message quotes the presented key), then
``anthropic-version`` (missing: 400), then the body (``max_tokens`` required; a ``system`` role
in ``messages`` refused: 400 ``invalid_request_error``).

Success is a ``message`` whose text echoes the last message, with ``USAGE`` (cache read and
cache creation tokens included). Failures, queued with ``fake.script(...)``:
``rate_limited(retry_after)`` (429 ``rate_limit_error``, retry-after only when given),
``spend_limit()`` (429 with ``details.error_code == "enforced_spend_limit_reached"``),
``overloaded()`` (529 ``overloaded_error``), ``api_error(status)`` (500 ``api_error``),
``common.hung(seconds)``.
"""

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fakes.common import FakeProvider, LoggedRequest, Reply

USAGE: dict[str, Any] = {
    "input_tokens": 21,
    "cache_creation_input_tokens": 188,
    "cache_read_input_tokens": 1024,
    "cache_creation": {"ephemeral_5m_input_tokens": 188, "ephemeral_1h_input_tokens": 0},
    "output_tokens": 57,
    "service_tier": "standard",
}
REQUEST_ID = "req_011CSHoEeqs5C35K2UUqR7Fy"


class AnthropicFake(FakeProvider):
    def build_app(self) -> FastAPI:
        return create_app(self)


def create_app(fake: AnthropicFake) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/messages")
    async def messages(request: Request) -> Response:
        return await fake.answer(request, deny=lambda logged: _deny(fake, logged), success=message)

    return app


def _deny(fake: AnthropicFake, logged: LoggedRequest) -> Response | None:
    presented = logged.headers.get("x-api-key")
    if presented is None:
        return error(401, "authentication_error", "x-api-key header is required")
    if presented != fake.key:
        shown = f"invalid x-api-key: {presented}" if fake.echo_key else "invalid x-api-key"
        return error(401, "authentication_error", shown)
    if "anthropic-version" not in logged.headers:
        return error(400, "invalid_request_error", "anthropic-version: header is required")
    return _invalid_body(logged.json or {})


def _invalid_body(body: dict[str, Any]) -> Response | None:
    if "max_tokens" not in body:
        return error(400, "invalid_request_error", "max_tokens: Field required")
    if any(turn.get("role") == "system" for turn in body.get("messages", [])):
        return error(
            400,
            "invalid_request_error",
            'messages: Unexpected role "system". The Messages API accepts a top-level `system` '
            'parameter, not "system" as an input message role.',
        )
    return None


def error_body(kind: str, text: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": kind, "message": text, **extra},
        "request_id": REQUEST_ID,
    }


def error(status: int, kind: str, text: str) -> JSONResponse:
    return JSONResponse(error_body(kind, text), status_code=status)


def message(body: Any) -> dict[str, Any]:
    """A message echoing the last message of ``body``."""
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [{"type": "text", "text": str(body["messages"][-1]["content"])}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": USAGE,
    }


def rate_limited(retry_after: str | None = None) -> Reply:
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2025-01-01T00:00:30Z",
    }
    if retry_after is not None:
        headers["retry-after"] = retry_after
    text = (
        "This request would exceed the rate limit for your organization of 50 requests per "
        "minute. For details, refer to: https://docs.claude.com/en/api/rate-limits."
    )
    return Reply(status=429, body=error_body("rate_limit_error", text), headers=headers)


def spend_limit() -> Reply:
    text = (
        "You have reached your specified workspace API usage limits. You will regain access on "
        "2025-02-01 at 00:00 UTC."
    )
    details = {"error_code": "enforced_spend_limit_reached"}
    return Reply(status=429, body=error_body("rate_limit_error", text, details=details))


def overloaded() -> Reply:
    return Reply(status=529, body=error_body("overloaded_error", "Overloaded"))


def api_error(status: int = 500) -> Reply:
    return Reply(status=status, body=error_body("api_error", "Internal server error"))
