"""Gemini API (AI Studio key): ``POST {base}/v1beta/models/{model}:generateContent``.

The key goes in the ``x-goog-api-key`` header only, never in the URL (URLs end up in logs).
The base is ``settings.provider_endpoints["gemini"]``, else
``https://generativelanguage.googleapis.com``. Body, answer and errors are Google's
(``workers.providers.google_format``).
"""

from typing import Any
from urllib.parse import quote

from schemas.credentials import GeminiCredential
from schemas.inference import InferenceRequest, InferenceResult
from workers.providers.google_format import (
    error_for,
    generate_content_body,
    generate_content_result,
)
from workers.providers.http import HttpAdapter, chat_input, credential_as, request_json

DEFAULT_BASE = "https://generativelanguage.googleapis.com"


class GeminiAdapter(HttpAdapter):
    async def invoke(self, request: InferenceRequest, credential: Any) -> InferenceResult:
        key = credential_as(credential, GeminiCredential).api_key.get_secret_value()
        base = self.settings.provider_endpoints.get("gemini", DEFAULT_BASE).rstrip("/")
        model = quote(request.model.removeprefix("models/"), safe="")
        body = await request_json(
            self.client,
            "POST",
            f"{base}/v1beta/models/{model}:generateContent",
            headers={"x-goog-api-key": key},
            json=generate_content_body(chat_input(request)),
            timeout_s=request.timeout_s,
            on_error=error_for,
            secrets=[key],
        )
        return generate_content_result(body, request.model)
