"""OpenAI chat completions: ``POST {base}/v1/chat/completions`` with ``Authorization: Bearer``.

The base is the credential's ``base_url`` (an OpenAI-compatible endpoint; it must be on
``settings.provider_hosts``, and a trailing ``/v1`` is accepted), else
``settings.provider_endpoints["openai"]``, else ``https://api.openai.com``.

The body and answer shapes and the error mapping are shared with Azure OpenAI, which speaks
the same chat format.
"""

import re
from typing import Any

import httpx

from schemas.credentials import OpenAICredential
from schemas.inference import ChatInput, InferenceRequest, InferenceResult, Usage
from workers.providers.errors import ProviderError, class_for_status
from workers.providers.http import (
    HttpAdapter,
    chat_input,
    credential_as,
    dig,
    error_from,
    int_at,
    json_body,
    request_json,
    require_allowed,
)

DEFAULT_BASE = "https://api.openai.com"
#: Azure's 429 may carry its delay only in its message: "Please retry after 6 seconds."
_RETRY_IN_MESSAGE = re.compile(r"retry after (\d+(?:\.\d+)?) seconds?", re.IGNORECASE)


class OpenAIAdapter(HttpAdapter):
    async def invoke(self, request: InferenceRequest, credential: Any) -> InferenceResult:
        secret = credential_as(credential, OpenAICredential)
        body = await request_json(
            self.client,
            "POST",
            f"{self._base(secret)}/v1/chat/completions",
            headers=_headers(secret),
            json=chat_body(chat_input(request), request.model),
            timeout_s=request.timeout_s,
            on_error=error_for,
            secrets=[secret.api_key.get_secret_value()],
        )
        return chat_result(body, request.model)

    def _base(self, secret: OpenAICredential) -> str:
        if secret.base_url is None:
            return self.settings.provider_endpoints.get("openai", DEFAULT_BASE).rstrip("/")
        return require_allowed(secret.base_url, self.settings.provider_hosts).removesuffix("/v1")


def _headers(secret: OpenAICredential) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {secret.api_key.get_secret_value()}"}
    if secret.organization:
        headers["OpenAI-Organization"] = secret.organization
    if secret.project:
        headers["OpenAI-Project"] = secret.project
    return headers


def chat_body(chat: ChatInput, model: str) -> dict[str, Any]:
    """The chat completions body; unset options are left out."""
    messages = [{"role": "system", "content": chat.system}] if chat.system else []
    messages += [turn.model_dump() for turn in chat.conversation()]
    body = {
        "model": model,
        "messages": messages,
        "max_completion_tokens": chat.max_tokens,
        "temperature": chat.temperature,
        "stop": chat.stop,
    }
    return {name: value for name, value in body.items() if value is not None}


def chat_result(body: dict[str, Any], model: str) -> InferenceResult:
    """A chat completion's first choice, normalized."""
    output = {
        "text": dig(body, "choices", 0, "message", "content") or "",
        "finish_reason": dig(body, "choices", 0, "finish_reason"),
        "model": body.get("model") or model,
    }
    return InferenceResult(output=output, usage=chat_usage(body.get("usage")))


def chat_usage(usage: Any) -> Usage:
    return Usage(
        input_tokens=int_at(usage, "prompt_tokens"),
        output_tokens=int_at(usage, "completion_tokens"),
        cached_input_tokens=int_at(usage, "prompt_tokens_details", "cached_tokens"),
        reasoning_tokens=int_at(usage, "completion_tokens_details", "reasoning_tokens"),
        raw=usage if isinstance(usage, dict) else None,
    )


def error_for(response: httpx.Response) -> ProviderError:
    """The one mapping of an OpenAI (or Azure OpenAI) error answer."""
    body = json_body(response)
    message = dig(body, "error", "message")
    error_class = class_for_status(response.status_code)
    if response.status_code == 429 and dig(body, "error", "code") == "insufficient_quota":
        error_class = "quota_exhausted"
    error = error_from(response, error_class, message)
    if error.retry_after_s is None:
        error.retry_after_s = _retry_in_message(message)
    return error


def _retry_in_message(message: Any) -> float | None:
    found = _RETRY_IN_MESSAGE.search(str(message or ""))
    return float(found.group(1)) if found else None
