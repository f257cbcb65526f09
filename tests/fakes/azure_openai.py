"""A fake Azure OpenAI resource serving a few deployments, on both of Azure's routes.

- Classic: ``POST /openai/deployments/{deployment}/chat/completions?api-version=...`` with
  header ``api-key``; no ``api-version`` gets Azure's 404 "Resource not found".
- v1: ``POST /openai/v1/chat/completions`` with ``Authorization: Bearer`` and ``model`` naming
  the deployment.

A missing or wrong key gets Azure's 401 "Access denied due to invalid subscription key" (with
``fake.echo_key`` it quotes the presented key); an unknown deployment its 404
``DeploymentNotFound``. Success is OpenAI's chat completion (``tests.fakes.openai.completion``).
Failures, queued with ``fake.script(...)``: ``rate_limited(seconds, headers)`` (429 whose message
says "Please retry after N seconds", with any of ``retry-after``, ``retry-after-ms``,
``x-ms-retry-after-ms``), ``server_error(status)``, ``common.hung(seconds)``.
"""

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fakes import openai
from tests.fakes.common import FakeProvider, LoggedRequest, Reply

ACCESS_DENIED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
    "a valid key for an active subscription and use a correct regional API endpoint for your "
    "resource."
)
DEPLOYMENT_NOT_FOUND = (
    "The API deployment for this resource does not exist. If you created the deployment within "
    "the last 5 minutes, please wait a moment and try again."
)


class AzureOpenAIFake(FakeProvider):
    def __init__(self, key: str, *, deployments: dict[str, str], echo_key: bool = False) -> None:
        """``deployments``: deployment name -> the model it serves."""
        self.deployments = deployments
        super().__init__(key, echo_key=echo_key)

    def build_app(self) -> FastAPI:
        return create_app(self)


def create_app(fake: AzureOpenAIFake) -> FastAPI:
    app = FastAPI()

    @app.post("/openai/deployments/{deployment}/chat/completions")
    async def classic(request: Request, deployment: str) -> Response:
        return await fake.answer(
            request,
            deny=lambda logged: _deny_classic(fake, logged, deployment),
            success=lambda body: openai.completion(body, fake.deployments[deployment]),
        )

    @app.post("/openai/v1/chat/completions")
    async def v1(request: Request) -> Response:
        return await fake.answer(
            request,
            deny=lambda logged: _deny_v1(fake, logged),
            success=lambda body: openai.completion(body, fake.deployments[body["model"]]),
        )

    return app


def _deny_classic(fake: AzureOpenAIFake, logged: LoggedRequest, deployment: str) -> Response | None:
    if "api-version=" not in logged.query:
        return error(404, "404", "Resource not found")
    if logged.headers.get("api-key") != fake.key:
        return _access_denied(fake, logged.headers.get("api-key", ""))
    return _deployment(fake, deployment)


def _deny_v1(fake: AzureOpenAIFake, logged: LoggedRequest) -> Response | None:
    presented = logged.headers.get("authorization", "").removeprefix("Bearer ")
    if presented != fake.key:
        return _access_denied(fake, presented)
    return _deployment(fake, str((logged.json or {}).get("model")))


def _access_denied(fake: AzureOpenAIFake, presented: str) -> Response:
    message = f"{ACCESS_DENIED} Key: {presented}" if fake.echo_key else ACCESS_DENIED
    return error(401, "401", message)


def _deployment(fake: AzureOpenAIFake, deployment: str) -> Response | None:
    if deployment in fake.deployments:
        return None
    return error(404, "DeploymentNotFound", DEPLOYMENT_NOT_FOUND)


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status)


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def rate_limited(
    seconds: int = 6, headers: tuple[str, ...] = ("retry-after", "retry-after-ms")
) -> Reply:
    """Azure's token-rate 429; ``headers`` picks which delay headers it carries (maybe none)."""
    message = (
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
        "2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. "
        f"Please retry after {seconds} seconds. Please go here: https://aka.ms/oai/quotaincrease "
        "if you would like to further increase the default rate limit."
    )
    values = {
        "retry-after": str(seconds),
        "retry-after-ms": str(seconds * 1000),
        "x-ms-retry-after-ms": str(seconds * 1000),
    }
    chosen = {name: values[name] for name in headers}
    return Reply(status=429, body=error_body("429", message), headers=chosen)


def server_error(status: int = 500) -> Reply:
    message = "The server had an error while processing your request. Sorry about that!"
    return Reply(status=status, body=error_body("InternalServerError", message))
