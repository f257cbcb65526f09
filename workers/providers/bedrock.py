"""AWS Bedrock runtime, Converse API: ``POST {base}/model/{modelId}/converse``.

Design: the REST endpoint through the shared ``httpx.AsyncClient``, signed with botocore's own
``SigV4Auth`` -- not boto3's ``bedrock-runtime`` client. boto3 is synchronous: each call would
hold a thread for the whole model call (seconds to minutes), so 1000 calls in flight would need
1000 threads (or a pool that caps them), and a hop timeout could not cancel a call already on
its thread. Here the loop holds the calls; signing is a few HMACs on the loop, and the wire
format (JSON in, JSON out, the error type in ``x-amzn-ErrorType``) is small. It also settles
the traps of the boto3 route by construction:

- no retries: httpx makes one request (``AWS_RETRY_MODE``/``AWS_MAX_ATTEMPTS`` play no part);
- no credential from the environment: each request is signed with the tenant's keys, given
  explicitly, so an ``AWS_BEARER_TOKEN_BEDROCK`` (or ``AWS_ACCESS_KEY_ID``) in the process
  environment can never replace them;
- a tenant's Bedrock API key is sent as ``Authorization: Bearer``, over HTTPS only.

The base is ``settings.provider_endpoints["bedrock"]`` when set (test fakes), else
``https://bedrock-runtime.{region}.{partition DNS suffix}``; the region is the hop's, else the
credential's, and must be a region botocore knows. Usage, per the normalized table:
``input_tokens = inputTokens + cacheReadInputTokens + cacheWriteInputTokens``.
"""

import json
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from schemas.credentials import BedrockCredential, aws_regions
from schemas.errors import ErrorClass
from schemas.inference import ChatInput, InferenceRequest, InferenceResult, Usage
from workers.providers.errors import ProviderError, class_for_status
from workers.providers.http import (
    HttpAdapter,
    chat_input,
    credential_as,
    dig,
    error_from,
    json_body,
    request_json,
    system_and_turns,
    text_of,
    usage_with_cache,
)

SIGNING_NAME = "bedrock"

#: The one mapping of Bedrock's error types (``x-amzn-ErrorType``); others go by HTTP status.
ERROR_TYPES: dict[str, ErrorClass] = {
    "ThrottlingException": "rate_limited",
    "ServiceQuotaExceededException": "quota_exhausted",
    "ModelNotReadyException": "overloaded",
    "ServiceUnavailableException": "overloaded",
    "InternalServerException": "provider_error",
    "ModelErrorException": "provider_error",
    "ModelStreamErrorException": "provider_error",
    "ModelTimeoutException": "timeout",
    "ValidationException": "invalid_request",
    "ResourceNotFoundException": "invalid_request",
    "AccessDeniedException": "auth_failed",
    "UnrecognizedClientException": "auth_failed",
    "InvalidSignatureException": "auth_failed",
    "ExpiredTokenException": "auth_failed",
}
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}


class BedrockAdapter(HttpAdapter):
    async def invoke(self, request: InferenceRequest, credential: Any) -> InferenceResult:
        bedrock = credential_as(credential, BedrockCredential)
        region = request.region or bedrock.region
        url = f"{self.base(region)}/model/{quote(request.model, safe='')}/converse"
        content = json.dumps(converse_body(chat_input(request))).encode()
        headers, secrets = auth_headers(bedrock, region, url, content)
        body = await request_json(
            self.client,
            "POST",
            url,
            headers=headers,
            content=content,
            timeout_s=request.timeout_s,
            on_error=error_for,
            secrets=secrets,
        )
        return converse_result(body, request.model)

    def base(self, region: str) -> str:
        suffix = aws_regions().get(region)
        if suffix is None:
            raise ProviderError("invalid_request", f"{region!r} is not an AWS region")
        endpoint = self.settings.provider_endpoints.get("bedrock")
        return (endpoint or f"https://bedrock-runtime.{region}.{suffix}").rstrip("/")


def auth_headers(
    bedrock: BedrockCredential, region: str, url: str, content: bytes
) -> tuple[dict[str, str], list[str]]:
    """The request's headers, signed for the tenant, and the secrets to scrub from errors."""
    headers = {"Content-Type": "application/json"}
    if bedrock.api_key is not None:
        if urlsplit(url).scheme != "https":
            raise ProviderError("invalid_request", "a Bedrock API key is sent over HTTPS only")
        key = bedrock.api_key.get_secret_value()
        return headers | {"Authorization": f"Bearer {key}"}, [key]
    if not (bedrock.access_key_id and bedrock.secret_access_key):
        raise ProviderError("auth_failed", "Bedrock needs SigV4 keys or an API key")
    secret = bedrock.secret_access_key.get_secret_value()
    token = bedrock.session_token.get_secret_value() if bedrock.session_token else None
    signed = AWSRequest(method="POST", url=url, data=content, headers=headers)
    SigV4Auth(Credentials(bedrock.access_key_id, secret, token), SIGNING_NAME, region).add_auth(
        signed
    )
    return dict(signed.headers.items()), [s for s in (secret, token) if s]


def converse_body(chat: ChatInput) -> dict[str, Any]:
    system, turns = system_and_turns(chat)
    body: dict[str, Any] = {
        "messages": [
            {
                "role": "assistant" if turn.role == "assistant" else "user",
                "content": [{"text": text_of(turn.content)}],
            }
            for turn in turns
        ]
    }
    if system:
        body["system"] = [{"text": system}]
    config = {
        "maxTokens": chat.max_tokens,
        "temperature": chat.temperature,
        "topP": (chat.model_extra or {}).get("top_p"),
        "stopSequences": chat.stop,
    }
    config = {name: value for name, value in config.items() if value is not None}
    if config:
        body["inferenceConfig"] = config
    return body


def converse_result(body: dict[str, Any], model: str) -> InferenceResult:
    blocks = dig(body, "output", "message", "content")
    text = "".join(
        str(block["text"])
        for block in (blocks if isinstance(blocks, list) else [])
        if isinstance(block, dict) and "text" in block
    )
    reason = body.get("stopReason")
    output = {
        "text": text,
        "finish_reason": _FINISH_REASONS.get(str(reason), reason),
        "model": model,
    }
    return InferenceResult(output=output, usage=usage_from(body.get("usage")))


def usage_from(usage: Any) -> Usage:
    return usage_with_cache(
        usage, "inputTokens", "outputTokens", "cacheReadInputTokens", "cacheWriteInputTokens"
    )


def error_for(response: httpx.Response) -> ProviderError:
    """The one mapping of a Bedrock error answer, by its error type."""
    body = json_body(response)
    error_type = _error_type(response, body)
    error_class = ERROR_TYPES.get(error_type) or class_for_status(response.status_code)
    message = body.get("message") or body.get("Message") or f"HTTP {response.status_code}"
    return error_from(response, error_class, f"{error_type or 'error'}: {message}")


def _error_type(response: httpx.Response, body: dict[str, Any]) -> str:
    """``x-amzn-ErrorType`` (``ThrottlingException:http://internal...``), else the body's
    ``__type`` (``com.amazon...#ThrottlingException``)."""
    raw = response.headers.get("x-amzn-errortype") or body.get("__type") or body.get("code")
    return str(raw or "").split(":", 1)[0].rsplit("#", 1)[-1]
