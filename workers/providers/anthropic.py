"""Anthropic Messages API: ``POST {base}/v1/messages`` with ``x-api-key`` and ``anthropic-version``.

The base is ``settings.provider_endpoints["anthropic"]``, else ``https://api.anthropic.com``.
The chat input is translated: system prompts go to the top-level ``system``, every other turn
is a ``user`` or ``assistant`` message of text, ``max_tokens`` (required) defaults to 1024,
and ``temperature`` is clamped to Anthropic's 0..1.
"""

from typing import Any

import httpx

from schemas.credentials import AnthropicCredential
from schemas.errors import ErrorClass
from schemas.inference import ChatInput, ChatMessage, InferenceRequest, InferenceResult, Usage
from workers.providers.errors import ProviderError, class_for_status
from workers.providers.http import (
    HttpAdapter,
    chat_input,
    credential_as,
    dig,
    error_from,
    joined_text,
    json_body,
    request_json,
    system_and_turns,
    text_of,
    usage_with_cache,
)

DEFAULT_BASE = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class AnthropicAdapter(HttpAdapter):
    async def invoke(self, request: InferenceRequest, credential: Any) -> InferenceResult:
        key = credential_as(credential, AnthropicCredential).api_key.get_secret_value()
        base = self.settings.provider_endpoints.get("anthropic", DEFAULT_BASE).rstrip("/")
        body = await request_json(
            self.client,
            "POST",
            f"{base}/v1/messages",
            headers={"x-api-key": key, "anthropic-version": API_VERSION},
            json=messages_body(chat_input(request), request.model),
            timeout_s=request.timeout_s,
            on_error=error_for,
            secrets=[key],
        )
        return _result(body, request.model)


def messages_body(chat: ChatInput, model: str) -> dict[str, Any]:
    system, turns = system_and_turns(chat)
    temperature = None if chat.temperature is None else min(chat.temperature, 1.0)
    body = {
        "model": model,
        "max_tokens": chat.max_tokens or DEFAULT_MAX_TOKENS,
        "system": system,
        "messages": [_message(turn) for turn in turns],
        "temperature": temperature,
        "stop_sequences": chat.stop,
    }
    return {name: value for name, value in body.items() if value is not None}


def _message(turn: ChatMessage) -> dict[str, Any]:
    role = "assistant" if turn.role == "assistant" else "user"
    return {"role": role, "content": text_of(turn.content)}


def _result(body: dict[str, Any], model: str) -> InferenceResult:
    text = joined_text(body.get("content"), lambda block: block.get("type") == "text")
    stop = body.get("stop_reason")
    output = {
        "text": text,
        "finish_reason": _FINISH_REASONS.get(stop, stop) if isinstance(stop, str) else None,
        "model": body.get("model") or model,
    }
    return InferenceResult(output=output, usage=_usage(body.get("usage")))


def _usage(usage: Any) -> Usage:
    return usage_with_cache(
        usage,
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    )


def error_for(response: httpx.Response) -> ProviderError:
    """The one mapping of an Anthropic error answer."""
    body = json_body(response)
    error_class: ErrorClass = class_for_status(response.status_code)
    if dig(body, "error", "type") == "overloaded_error":
        error_class = "overloaded"
    if dig(body, "error", "details", "error_code") == "enforced_spend_limit_reached":
        error_class = "quota_exhausted"
    return error_from(response, error_class, dig(body, "error", "message"))
