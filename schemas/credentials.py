"""The shapes of the credentials tenants (and the platform) bring, one per provider.

``CredentialSecret`` is a discriminated union on ``provider``: it is what the vault
encrypts and what an adapter receives. None of these is ever sent back by the API:
responses carry ``CredentialPublic`` (metadata and a fingerprint) only.

None of them shows its secrets when printed or when it fails validation: keys are
``SecretStr``, a service-account JSON is a ``ServiceAccountKey`` (a dict whose repr masks the
private key), and validation errors leave the input out. A key sent in a header (``Key``) is
stripped of the whitespace it was pasted with, and refused if more is inside it: an illegal
header value would otherwise be quoted whole in the HTTP client's error.
"""

import re
from collections.abc import Mapping
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

#: What a key sent in an HTTP header may hold: visible ASCII, no spaces or line breaks.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
_MASKED = "**********"


def _stripped(key: object) -> object:
    return key.strip() if isinstance(key, str) else key


def _header_safe(key: SecretStr) -> SecretStr:
    if not _HEADER_SAFE.fullmatch(key.get_secret_value()):
        raise ValueError(
            "must be printable ASCII without spaces or line breaks: check what was pasted"
        )
    return key


#: A secret sent in a header: stripped of surrounding whitespace, then checked.
Key = Annotated[SecretStr, BeforeValidator(_stripped), AfterValidator(_header_safe)]


class ServiceAccountKey(dict[str, Any]):
    """A service-account key JSON: a plain dict, except that its repr masks the private key."""

    def __repr__(self) -> str:
        shown = {k: _MASKED if k == "private_key" else v for k, v in self.items()}
        return f"ServiceAccountKey({shown!r})"

    __str__ = __repr__


class _Secret(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class OpenAICredential(_Secret):
    provider: Literal["openai"] = "openai"
    api_key: Key
    organization: str | None = None
    project: str | None = None
    #: An OpenAI-compatible endpoint; must be on the allow-list of provider hosts.
    base_url: str | None = None


class AzureOpenAICredential(_Secret):
    provider: Literal["azure_openai"] = "azure_openai"
    #: ``https://<resource>.openai.azure.com``; must be on the allow-list of provider hosts.
    endpoint: str
    api_key: Key
    #: A dated version selects the classic deployments route; None selects the v1 route.
    api_version: str | None = None
    #: Model id (as in the catalog) -> deployment name.
    deployments: dict[str, str] = Field(default_factory=dict)


class AnthropicCredential(_Secret):
    provider: Literal["anthropic"] = "anthropic"
    api_key: Key


class GeminiCredential(_Secret):
    provider: Literal["gemini"] = "gemini"
    api_key: Key


#: A Vertex location (``us-central1``, ``europe-west4``, ``us``, ``global``): it becomes part
#: of a host name, so nothing else gets through.
VERTEX_LOCATION = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
#: A Google Cloud project id (``my-project-123``), optionally domain-scoped (``example.com:proj``).
GCP_PROJECT = re.compile(r"^([a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")


class VertexCredential(_Secret):
    provider: Literal["vertex"] = "vertex"
    #: The service-account JSON as Google's console downloads it (a ``ServiceAccountKey``).
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
        return ServiceAccountKey(info)


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
    secret_access_key: Key | None = None
    session_token: Key | None = None
    api_key: Key | None = None

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
    api_key: Key


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
