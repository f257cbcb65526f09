"""Vertex AI with a tenant's service account: Google models through ``generateContent``.

    POST https://{location}-aiplatform.googleapis.com/v1/projects/{project}/locations/{location}
         /publishers/google/models/{model}:generateContent        (location ``global``: host
                                                                   ``aiplatform.googleapis.com``)

The base is ``settings.provider_endpoints["vertex"]`` when set (private endpoints, test fakes).
The project is the credential's ``project``, else the key JSON's ``project_id``; the location is
the hop's region, else the credential's. The access token comes from
``ServiceAccountTokens`` (``google_auth_transport``): refreshed off the event loop, cached per
key until shortly before it expires, and only ever fetched from an allowed ``token_uri`` host.
Body, answer and errors are Google's (``workers.providers.google_format``).
"""

import asyncio
import re
from typing import Any
from urllib.parse import quote

from dispatcher.settings import Settings
from schemas.credentials import GCP_PROJECT, VERTEX_LOCATION, VertexCredential
from schemas.inference import InferenceRequest, InferenceResult
from workers.providers.errors import ProviderError
from workers.providers.google_auth_transport import ServiceAccountTokens
from workers.providers.google_format import (
    error_for,
    generate_content_body,
    generate_content_result,
)
from workers.providers.http import HttpAdapter, chat_input, credential_as, request_json


class VertexAdapter(HttpAdapter):
    def __init__(self, settings: Settings, *, tokens: ServiceAccountTokens | None = None) -> None:
        super().__init__(settings)
        self.tokens = tokens or ServiceAccountTokens(settings.token_hosts)

    async def invoke(self, request: InferenceRequest, credential: Any) -> InferenceResult:
        vertex = credential_as(credential, VertexCredential)
        url = self.url(vertex, request)
        token = await self.tokens.token(vertex.service_account)
        body = await request_json(
            self.client,
            "POST",
            url,
            headers={"Authorization": f"Bearer {token}"},
            json=generate_content_body(chat_input(request)),
            timeout_s=request.timeout_s,
            on_error=error_for,
            secrets=[token],
        )
        return generate_content_result(body, request.model)

    def url(self, vertex: VertexCredential, request: InferenceRequest) -> str:
        location = _checked(request.region or vertex.region, VERTEX_LOCATION, "location")
        project = _checked(
            vertex.project or str(vertex.service_account.get("project_id") or ""),
            GCP_PROJECT,
            "project",
        )
        base = self.settings.provider_endpoints.get("vertex") or _public_base(location)
        model = quote(request.model, safe="")
        return (
            f"{base.rstrip('/')}/v1/projects/{quote(project, safe='')}/locations/{location}"
            f"/publishers/google/models/{model}:generateContent"
        )

    async def aclose(self) -> None:
        await super().aclose()
        await asyncio.to_thread(self.tokens.close)


def _public_base(location: str) -> str:
    if location == "global":
        return "https://aiplatform.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


def _checked(value: str, pattern: re.Pattern[str], name: str) -> str:
    if not pattern.fullmatch(value):
        raise ProviderError("invalid_request", f"vertex {name} {value!r} is not valid")
    return value
