"""The shapes of the credentials tenants (and the platform) bring, one per provider.

``CredentialSecret`` is a discriminated union on ``provider``: it is what the vault
encrypts and what an adapter receives. None of these is ever sent back by the API:
responses carry ``CredentialPublic`` (metadata and a fingerprint) only.
"""

import re
from collections.abc import Mapping
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


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


#: A Vertex location (``us-central1``, ``europe-west4``, ``us``, ``global``): it becomes part
#: of a host name, so nothing else gets through.
VERTEX_LOCATION = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
#: A Google Cloud project id (``my-project-123``), optionally domain-scoped (``example.com:proj``).
GCP_PROJECT = re.compile(r"^([a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")


class VertexCredential(_Secret):
    provider: Literal["vertex"] = "vertex"
    #: The service-account JSON as Google's console downloads it.
    service_account: dict[str, Any]
    region: str = Field(default="global", pattern=VERTEX_LOCATION.pattern)
    project: str | None = Field(default=None, pattern=GCP_PROJECT.pattern)

    @field_validator("service_account")
    @classmethod
    def _is_service_account_key(cls, info: dict[str, Any]) -> dict[str, Any]:
        if info.get("type") != "service_account":
            raise ValueError('service_account must be a key JSON with "type": "service_account"')
        missing = [k for k in ("client_email", "private_key", "token_uri") if not info.get(k)]
        if missing:
            raise ValueError(f"service_account lacks {', '.join(missing)}")
        return info


@cache
def aws_regions() -> Mapping[str, str]:
    """AWS regions botocore knows (read offline from its partitions data), each with its
    partition's DNS suffix (``amazonaws.com``, ``amazonaws.com.cn``, ...)."""
    import botocore.loaders  # here, not at the top: a fifth of a second most imports never need

    partitions = botocore.loaders.create_loader().load_data("partitions")["partitions"]
    return {
        region: partition["outputs"]["dnsSuffix"]
        for partition in partitions
        for region in partition["regions"]
        if re.match(partition["regionRegex"], region)  # leaves out "aws-global" and the like
    }


class BedrockCredential(_Secret):
    """SigV4 keys (access key id + secret, optional session token) or a Bedrock API key."""

    provider: Literal["bedrock"] = "bedrock"
    region: str
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    api_key: SecretStr | None = None

    @field_validator("region")
    @classmethod
    def _is_aws_region(cls, region: str) -> str:
        if region not in aws_regions():
            raise ValueError(f"{region!r} is not an AWS region")
        return region

    @model_validator(mode="after")
    def _one_kind_of_key(self) -> Self:
        sigv4 = (self.access_key_id, self.secret_access_key, self.session_token)
        if any(sigv4) and not (self.access_key_id and self.secret_access_key):
            raise ValueError("SigV4 keys need both access_key_id and secret_access_key")
        if bool(self.access_key_id) == bool(self.api_key):
            raise ValueError(
                "give either access_key_id + secret_access_key (+ session_token) or api_key"
            )
        return self


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
