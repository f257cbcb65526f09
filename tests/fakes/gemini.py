"""A fake Gemini API (AI Studio key): ``POST /v1beta/models/{model}:generateContent``.

Auth, as Google checks it: the key in ``x-goog-api-key`` (or ``?key=``, which the fake also
accepts so that a test can see in the log which one the adapter used). No key gets Google's 403
``PERMISSION_DENIED`` "unregistered callers"; a wrong key its 400 ``INVALID_ARGUMENT`` "API key
not valid" with ``ErrorInfo`` reason ``API_KEY_INVALID`` (with ``fake.echo_key`` the message
quotes the presented key).

Success echoes the last user text with ``USAGE_METADATA`` (cached and thoughts tokens included).
Failures, queued with ``fake.script(...)``: ``rate_limited(retry_delay, per_day)`` (429
``RESOURCE_EXHAUSTED`` with a ``QuotaFailure`` whose quotaId is per minute or per day, and a
``RetryInfo`` when ``retry_delay`` is given), ``unavailable()`` (503 ``UNAVAILABLE``),
``internal()`` (500 ``INTERNAL``), ``common.hung(seconds)``.
"""

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fakes.common import FakeProvider, LoggedRequest, Reply

RPC = "type.googleapis.com/google.rpc."
QUOTA_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
USAGE_METADATA: dict[str, Any] = {
    "promptTokenCount": 1100,
    "candidatesTokenCount": 40,
    "totalTokenCount": 1236,
    "cachedContentTokenCount": 1024,
    "thoughtsTokenCount": 96,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1100}],
    "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 1024}],
}
UNREGISTERED = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)


class GeminiFake(FakeProvider):
    def build_app(self) -> FastAPI:
        return create_app(self)


def create_app(fake: GeminiFake) -> FastAPI:
    app = FastAPI()

    @app.post("/v1beta/models/{model}:generateContent")
    async def generate_content(request: Request, model: str) -> Response:
        return await fake.answer(
            request,
            deny=lambda logged: _deny(fake, logged, request.query_params.get("key")),
            success=lambda body: response(body, model),
        )

    return app


def _deny(fake: GeminiFake, logged: LoggedRequest, query_key: str | None) -> Response | None:
    presented = logged.headers.get("x-goog-api-key") or query_key
    if presented is None:
        return error(403, "PERMISSION_DENIED", UNREGISTERED)
    if presented == fake.key:
        return None
    text = "API key not valid. Please pass a valid API key."
    if fake.echo_key:
        text += f" Key: {presented}"
    info = {
        "@type": RPC + "ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
        "metadata": {"service": "generativelanguage.googleapis.com"},
    }
    return error(400, "INVALID_ARGUMENT", text, [info])


def error_body(code: int, status: str, text: str, details: list[Any]) -> dict[str, Any]:
    error = {"code": code, "message": text, "status": status}
    return {"error": error | {"details": details}} if details else {"error": error}


def error(code: int, status: str, text: str, details: list[Any] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, status, text, details or []), status_code=code)


def response(body: Any, model: str) -> dict[str, Any]:
    """A generateContent answer echoing the last user text of ``body``."""
    text = body["contents"][-1]["parts"][0]["text"]
    return {
        "candidates": [
            {
                "content": {"parts": [{"text": text}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": USAGE_METADATA,
        "modelVersion": model,
        "responseId": "mK2vaLXcFpmjz7IPvJ3o-Ak",
    }


def rate_limited(retry_delay: str | None = "37s", *, per_day: bool = False) -> Reply:
    window = "PerDay" if per_day else "PerMinute"
    details: list[Any] = [
        {
            "@type": RPC + "QuotaFailure",
            "violations": [
                {
                    "quotaMetric": QUOTA_METRIC,
                    "quotaId": f"GenerateRequests{window}PerProjectPerModel-FreeTier",
                    "quotaDimensions": {"location": "global", "model": "gemini-2.5-pro"},
                    "quotaValue": "50" if per_day else "5",
                }
            ],
        },
        {
            "@type": RPC + "Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
    ]
    if retry_delay is not None:
        details.append({"@type": RPC + "RetryInfo", "retryDelay": retry_delay})
    text = (
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
    )
    return Reply(status=429, body=error_body(429, "RESOURCE_EXHAUSTED", text, details))


def unavailable() -> Reply:
    text = "The model is overloaded. Please try again later."
    return Reply(status=503, body=error_body(503, "UNAVAILABLE", text, []))


def internal() -> Reply:
    text = (
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting"
    )
    return Reply(status=500, body=error_body(500, "INTERNAL", text, []))
