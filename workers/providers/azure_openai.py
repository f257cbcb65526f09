"""Azure OpenAI chat completions, on the tenant's own resource endpoint.

- ``api_version`` set (classic): ``POST {endpoint}/openai/deployments/{deployment}/chat/completions
  ?api-version=...`` with header ``api-key``.
- ``api_version`` None (v1): ``POST {endpoint}/openai/v1/chat/completions`` with
  ``Authorization: Bearer`` and ``model`` = the deployment name.

The deployment is ``credential.deployments[request.model]``, else the model id itself. The
endpoint is tenant-supplied: it must be on ``settings.provider_hosts``. Body, answer and errors
are OpenAI's (``workers.providers.openai``).
"""

from typing import Any
from urllib.parse import quote, urlencode

from schemas.credentials import AzureOpenAICredential
from schemas.inference import InferenceRequest, InferenceResult
from workers.providers.http import (
    HttpAdapter,
    chat_input,
    credential_as,
    request_json,
    require_allowed,
)
from workers.providers.openai import chat_body, chat_result, error_for


class AzureOpenAIAdapter(HttpAdapter):
    async def invoke(self, request: InferenceRequest, credential: Any) -> InferenceResult:
        secret = credential_as(credential, AzureOpenAICredential)
        endpoint = require_allowed(secret.endpoint, self.settings.provider_hosts)
        deployment = secret.deployments.get(request.model, request.model)
        body = await request_json(
            self.client,
            "POST",
            **_route(secret, endpoint, deployment),
            json=chat_body(chat_input(request), deployment),
            timeout_s=request.timeout_s,
            on_error=error_for,
            secrets=[secret.api_key.get_secret_value()],
        )
        return chat_result(body, deployment)


def _route(secret: AzureOpenAICredential, endpoint: str, deployment: str) -> dict[str, Any]:
    """The URL, query and auth header of the classic route or of the v1 route."""
    key = secret.api_key.get_secret_value()
    if secret.api_version is None:
        return {
            "url": f"{endpoint}/openai/v1/chat/completions",
            "headers": {"Authorization": f"Bearer {key}"},
        }
    path = f"/openai/deployments/{quote(deployment, safe='')}/chat/completions"
    query = urlencode({"api-version": secret.api_version})
    return {"url": f"{endpoint}{path}?{query}", "headers": {"api-key": key}}
