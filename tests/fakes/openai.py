"""A fake OpenAI chat completions endpoint: ``POST /v1/chat/completions``.

Auth is ``Authorization: Bearer <key>``. No key gets OpenAI's "You didn't provide an API key"
401; a wrong key its ``invalid_api_key`` 401, which quotes the key masked as OpenAI does (first
8 and last 4 characters shown), or whole when ``fake.echo_key`` is set.

Success is a ``chat.completion`` whose text echoes the last message, with ``USAGE`` (cached and
reasoning token details included). Failures, queued with ``fake.script(...)``:
``rate_limited(retry_after)`` (429 ``rate_limit_exceeded``, Retry-After only when given),
``insufficient_quota()`` (429), ``server_error(status)`` (OpenAI's JSON 5xx),
``common.bad_gateway()`` (an HTML 502), ``common.hung(seconds)``.
"""

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fakes.common import FakeProvider, LoggedRequest, Reply

MODEL = "gpt-4o-mini-2024-07-18"
USAGE: dict[str, Any] = {
    "prompt_tokens": 1230,
    "completion_tokens": 75,
    "total_tokens": 1305,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 32,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with "
    "blank username) if you're accessing the API from your browser and are prompted for a "
    "username. You can obtain an API key from https://platform.openai.com/account/api-keys."
)


class OpenAIFake(FakeProvider):
    def build_app(self) -> FastAPI:
        return create_app(self)


def create_app(fake: OpenAIFake) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await fake.answer(
            request, deny=lambda logged: deny(fake, logged), success=completion
        )

    return app


def deny(fake: FakeProvider, logged: LoggedRequest) -> Response | None:
    """OpenAI's 401s for a missing or wrong bearer key (Azure's v1 route shares this check)."""
    authorization = logged.headers.get("authorization", "")
    if not authorization.startswith("Bearer "):
        return JSONResponse(error_body(NO_KEY, "invalid_request_error", None), status_code=401)
    presented = authorization.removeprefix("Bearer ")
    if presented == fake.key:
        return None
    shown = presented if fake.echo_key else f"{presented[:8]}{'*' * 20}{presented[-4:]}"
    message = (
        f"Incorrect API key provided: {shown}. "
        "You can find your API key at https://platform.openai.com/account/api-keys."
    )
    body = error_body(message, "invalid_request_error", "invalid_api_key")
    return JSONResponse(body, status_code=401)


def error_body(message: str, kind: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def completion(body: Any, model: str = MODEL) -> dict[str, Any]:
    """A chat completion echoing the last message of ``body``."""
    return {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741569952,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": str(body["messages"][-1]["content"]),
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
    }


def rate_limited(retry_after: str | None = None) -> Reply:
    message = (
        f"Rate limit reached for {MODEL} in organization org-tenant on requests per min (RPM): "
        "Limit 500, Used 500, Requested 1. Please try again in 120ms."
    )
    headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "120ms",
    }
    if retry_after is not None:
        headers["retry-after"] = retry_after
    body = error_body(message, "requests", "rate_limit_exceeded")
    return Reply(status=429, body=body, headers=headers)


def insufficient_quota() -> Reply:
    message = (
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors."
    )
    return Reply(status=429, body=error_body(message, "insufficient_quota", "insufficient_quota"))


def server_error(status: int = 500) -> Reply:
    message = "The server had an error while processing your request. Sorry about that!"
    return Reply(status=status, body=error_body(message, "server_error", None))
