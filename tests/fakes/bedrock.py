"""A fake Bedrock runtime: ``POST /model/{modelId}/converse`` with real SigV4 checking.

SigV4 is verified the way AWS does it: the request is rebuilt with only the signed headers,
the timestamp pinned to ``X-Amz-Date``, the canonical URI taken from the raw path as sent
(botocore double-encodes it: ``:`` in a model id is ``%3A`` on the wire, ``%253A`` in the
canonical request; the raw paths are kept in ``raw_paths``), and the signature recomputed with
botocore's ``SigV4Auth`` and the secret this fake holds for the access key id. An unknown key
id gets ``UnrecognizedClientException``, a wrong signature ``InvalidSignatureException``.
The bearer API key (``fake.key``) is accepted only over TLS (serve with ``tests.fakes.tls``).

Success is a Converse answer echoing the last user text, with cache read/write tokens.
Failures, queued with ``fake.script(aws_error(error_type))``: AWS's shape, ``{"message"}`` and
the ``x-amzn-ErrorType`` header.
"""

import hmac
from datetime import UTC, datetime
from typing import Any, Self

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fakes.common import FakeProvider, LoggedRequest, Reply

_CORAL = "http://internal.amazon.com/coral/com.amazon.coral.service/"

#: Bedrock's error types, with their status and message.
ERRORS: dict[str, tuple[int, str]] = {
    "ThrottlingException": (429, "Too many requests, please wait before trying again."),
    "ModelNotReadyException": (429, "Model is not ready for inference. Try again later."),
    "ServiceUnavailableException": (503, "Bedrock is unable to process your request."),
    "InternalServerException": (500, "The server encountered an error processing the request."),
    "ModelTimeoutException": (408, "Model has timed out in processing the request."),
    "ModelErrorException": (424, "The model encountered an error processing the request."),
    "ValidationException": (400, "The provided model identifier is invalid."),
    "AccessDeniedException": (403, "You don't have access to the model with the specified ID."),
    "ResourceNotFoundException": (404, "Model not found."),
    "ServiceQuotaExceededException": (400, "Your request exceeds the service quota."),
    "UnrecognizedClientException": (403, "The security token included in the request is invalid."),
    "InvalidSignatureException": (
        403,
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method.",
    ),
    "ExpiredTokenException": (403, "The security token included in the request is expired"),
}
USAGE = {"cacheReadInputTokens": 3, "cacheWriteInputTokens": 2}


def aws_error(error_type: str, message: str | None = None) -> Reply:
    status, default = ERRORS[error_type]
    headers = {"x-amzn-ErrorType": f"{error_type}:{_CORAL}"}
    return Reply(status=status, body={"message": message or default}, headers=headers)


def _response(reply: Reply) -> Response:
    return JSONResponse(reply.body, reply.status, headers=reply.headers)


class BedrockFake(FakeProvider):
    def __init__(
        self,
        api_key: str,
        *,
        keys: dict[str, str],
        session_tokens: dict[str, str] | None = None,
        region: str = "us-east-1",
    ) -> None:
        #: Access key id -> secret; access key id -> the session token it requires.
        self.keys = keys
        self.session_tokens = session_tokens or {}
        self.region = region
        self.raw_paths: list[str] = []
        super().__init__(api_key)

    def reset(self) -> Self:
        self.raw_paths.clear()
        return super().reset()

    def build_app(self) -> FastAPI:
        app = FastAPI()
        app.post("/model/{model_id:path}/converse")(self._converse)
        return app

    async def _converse(self, request: Request) -> Response:
        body = await request.body()
        raw_path = request.scope["raw_path"].decode()
        self.raw_paths.append(raw_path)
        return await self.answer(
            request,
            deny=lambda logged: self._deny(request, logged, raw_path, body),
            success=converse_answer,
        )

    def _deny(
        self, request: Request, logged: LoggedRequest, raw_path: str, body: bytes
    ) -> Response | None:
        authorization = logged.headers.get("authorization", "")
        if authorization.startswith("Bearer "):
            if request.url.scheme == "https" and authorization[7:] == self.key:
                return None
            return _response(aws_error("AccessDeniedException", "Authentication failed."))
        if not authorization.startswith("AWS4-HMAC-SHA256 "):
            return _response(aws_error("AccessDeniedException", "Missing Authentication Token"))
        parts = dict(
            part.strip().split("=", 1)
            for part in authorization.removeprefix("AWS4-HMAC-SHA256 ").split(",")
        )
        refusal = self._check_scope(logged, parts["Credential"])
        if refusal:
            return _response(aws_error(*refusal))
        key_id, _, region, _, _ = parts["Credential"].split("/")
        token = logged.headers.get("x-amz-security-token")
        credentials = Credentials(key_id, self.keys[key_id], token)
        signed_headers = parts["SignedHeaders"].split(";")
        expected = _signature(request, raw_path, body, signed_headers, credentials, region)
        if not hmac.compare_digest(expected, parts["Signature"]):
            return _response(aws_error("InvalidSignatureException"))
        return None

    def _check_scope(self, logged: LoggedRequest, scope: str) -> tuple[str, str | None] | None:
        """The error (type, message) the key id, scope and date call for, if any."""
        key_id, _, region, service, _ = scope.split("/")
        if key_id not in self.keys:
            return "UnrecognizedClientException", None
        if self.session_tokens.get(key_id) != logged.headers.get("x-amz-security-token"):
            return "UnrecognizedClientException", None
        if (region, service) != (self.region, "bedrock"):
            return "InvalidSignatureException", "Credential should be scoped correctly."
        signed = datetime.strptime(logged.headers.get("x-amz-date", ""), "%Y%m%dT%H%M%SZ")
        if abs((datetime.now(UTC) - signed.replace(tzinfo=UTC)).total_seconds()) > 300:
            return "InvalidSignatureException", "Signature expired."
        return None


def _signature(
    request: Request,
    raw_path: str,
    body: bytes,
    signed_headers: list[str],
    credentials: Credentials,
    region: str,
) -> str:
    """botocore's SigV4 signature of the request as received, from its signed headers only."""
    query = f"?{request.url.query}" if request.url.query else ""
    rebuilt = AWSRequest(
        method=request.method,
        url=f"{request.url.scheme}://{request.headers['host']}{raw_path}{query}",
        headers={name: request.headers.get(name, "") for name in signed_headers},
        data=body,
    )
    rebuilt.context["timestamp"] = request.headers["x-amz-date"]
    signer = SigV4Auth(credentials, "bedrock", region)
    canonical = signer.canonical_request(rebuilt)
    return str(signer.signature(signer.string_to_sign(rebuilt, canonical), rebuilt))


def converse_answer(body: Any) -> dict[str, Any]:
    """A Converse answer echoing the last user text."""
    last = body["messages"][-1]["content"][0]["text"]
    words_in = sum(
        len(block.get("text", "").split()) for m in body["messages"] for block in m["content"]
    )
    usage = {"inputTokens": words_in, "outputTokens": len(last.split())} | USAGE
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": last}]}},
        "stopReason": "end_turn",
        "usage": usage | {"totalTokens": sum(usage.values())},
        "metrics": {"latencyMs": 12},
    }
