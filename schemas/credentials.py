"""The shapes of the credentials tenants (and the platform) bring, one per provider.

``CredentialSecret`` is a discriminated union on ``provider``: it is what the vault
encrypts and what an adapter receives. None of these is ever sent back by the API:
responses carry ``CredentialPublic`` (metadata and a fingerprint) only.
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class _Secret(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenAICredential(_Secret):
    provider: Literal["openai"] = "openai"
    api_key: SecretStr
    organization: str | None = None
    project: str | None = None
    #: An OpenAI-compatible endpoint; must be on the allow-list of provider hosts.
    base_url: str | None = None


class AzureOpenAICredential(_Secret):
    provider: Literal["azure_openai"] = "azure_openai"
    #: ``https://<resource>.openai.azure.com``; must be on the allow-list of provider hosts.
    endpoint: str
    api_key: SecretStr
    #: A dated version selects the classic deployments route; None selects the v1 route.
    api_version: str | None = None
    #: Model id (as in the catalog) -> deployment name.
    deployments: dict[str, str] = Field(default_factory=dict)


class AnthropicCredential(_Secret):
    provider: Literal["anthropic"] = "anthropic"
    api_key: SecretStr


class GeminiCredential(_Secret):
    provider: Literal["gemini"] = "gemini"
    api_key: SecretStr


class VertexCredential(_Secret):
    provider: Literal["vertex"] = "vertex"
    #: The service-account JSON as Google's console downloads it.
    service_account: dict[str, Any]
    region: str = "global"
    project: str | None = None


class BedrockCredential(_Secret):
    """SigV4 keys (access key id + secret, optional session token) or a Bedrock API key."""

    provider: Literal["bedrock"] = "bedrock"
    region: str
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    api_key: SecretStr | None = None


class FalCredential(_Secret):
    provider: Literal["fal"] = "fal"
    api_key: SecretStr


CredentialSecret = Annotated[
    OpenAICredential
    | AzureOpenAICredential
    | AnthropicCredential
    | GeminiCredential
    | VertexCredential
    | BedrockCredential
    | FalCredential,
    Field(discriminator="provider"),
]


class CredentialPublic(BaseModel):
    """What the API shows of a credential: never the secret itself."""

    name: str
    provider: str
    fingerprint: str
    healthy: bool
    health_reason: str | None = None
    created_at: datetime
    last_used_at: datetime | None = None
