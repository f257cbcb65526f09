"""Google's generateContent format, shared by the Gemini API and Vertex AI adapters.

- ``generate_content_body(chat)``: the chat input as ``contents`` / ``systemInstruction`` /
  ``generationConfig``.
- ``generate_content_result(body, model)``: the first candidate's text, finish reason and model
  version, with ``usage_from(body["usageMetadata"])``.
- ``error_for(response)``: the one mapping of a ``google.rpc`` error answer
  (``{"error": {"code", "message", "status", "details"}}``):

      RESOURCE_EXHAUSTED, a QuotaFailure quotaId containing "PerDay" -> quota_exhausted
      RESOURCE_EXHAUSTED                                             -> rate_limited
      UNAVAILABLE                                                    -> overloaded
      INTERNAL                                                       -> provider_error
      DEADLINE_EXCEEDED                                              -> timeout
      UNAUTHENTICATED, PERMISSION_DENIED, ErrorInfo reason API_KEY_* -> auth_failed
      anything else                                                  -> by HTTP status

  ``retry_after_s`` comes from ``RetryInfo.retryDelay`` (Vertex sends no Retry-After header).
"""

from typing import Any

import httpx

from schemas.errors import ErrorClass
from schemas.inference import ChatInput, ChatMessage, InferenceResult, Usage
from workers.providers.errors import ProviderError, class_for_status
from workers.providers.http import (
    dig,
    error_from,
    google_details,
    int_at,
    joined_text,
    json_body,
    system_and_turns,
    text_of,
)

_STATUS_CLASSES: dict[str, ErrorClass] = {
    "RESOURCE_EXHAUSTED": "rate_limited",
    "UNAVAILABLE": "overloaded",
    "INTERNAL": "provider_error",
    "DEADLINE_EXCEEDED": "timeout",
    "UNAUTHENTICATED": "auth_failed",
    "PERMISSION_DENIED": "auth_failed",
}
_FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}


def generate_content_body(chat: ChatInput) -> dict[str, Any]:
    system, turns = system_and_turns(chat)
    config = {
        "maxOutputTokens": chat.max_tokens,
        "temperature": chat.temperature,
        "stopSequences": chat.stop,
    }
    body: dict[str, Any] = {"contents": [_content(turn) for turn in turns]}
    if system:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    config = {name: value for name, value in config.items() if value is not None}
    if config:
        body["generationConfig"] = config
    return body


def _content(turn: ChatMessage) -> dict[str, Any]:
    role = "model" if turn.role in ("assistant", "model") else "user"
    return {"role": role, "parts": [{"text": text_of(turn.content)}]}


def generate_content_result(body: dict[str, Any], model: str) -> InferenceResult:
    """The first candidate (thought parts left out); a blocked prompt is an empty text."""
    parts = dig(body, "candidates", 0, "content", "parts")
    text = joined_text(parts, lambda part: not part.get("thought"))
    output = {
        "text": text,
        "finish_reason": _finish_reason(body),
        "model": body.get("modelVersion") or model,
    }
    return InferenceResult(output=output, usage=usage_from(body.get("usageMetadata")))


def _finish_reason(body: dict[str, Any]) -> str | None:
    reason = dig(body, "candidates", 0, "finishReason")
    if reason is None and dig(body, "promptFeedback", "blockReason"):
        return "content_filter"
    if not isinstance(reason, str):
        return None
    return _FINISH_REASONS.get(reason, reason.lower())


def usage_from(metadata: Any) -> Usage:
    """``usageMetadata`` normalized: thoughts count as output and as reasoning."""
    thoughts = int_at(metadata, "thoughtsTokenCount")
    return Usage(
        input_tokens=int_at(metadata, "promptTokenCount")
        + int_at(metadata, "toolUsePromptTokenCount"),
        output_tokens=int_at(metadata, "candidatesTokenCount") + thoughts,
        cached_input_tokens=int_at(metadata, "cachedContentTokenCount"),
        reasoning_tokens=thoughts,
        raw=metadata if isinstance(metadata, dict) else None,
    )


def error_for(response: httpx.Response) -> ProviderError:
    """The one mapping of a Google error answer (Gemini API or Vertex AI)."""
    body = json_body(response)
    return error_from(response, _error_class(response, body), dig(body, "error", "message"))


def _error_class(response: httpx.Response, body: dict[str, Any]) -> ErrorClass:
    status = dig(body, "error", "status")
    if status == "RESOURCE_EXHAUSTED" and _per_day_quota(body):
        return "quota_exhausted"
    if any(
        str(info.get("reason", "")).startswith("API_KEY_")
        for info in google_details(body, "ErrorInfo")
    ):
        return "auth_failed"
    return _STATUS_CLASSES.get(str(status), class_for_status(response.status_code))


def _per_day_quota(body: dict[str, Any]) -> bool:
    violations = [
        v
        for failure in google_details(body, "QuotaFailure")
        for v in failure.get("violations") or []
    ]
    return any("PerDay" in str(dig(violation, "quotaId") or "") for violation in violations)
