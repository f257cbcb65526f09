"""Bedrock Converse against the fake Bedrock runtime over loopback HTTP: SigV4 recomputed by
the fake, bearer API keys over TLS, the environment's AWS settings kept out of tenants' calls,
and every error type."""

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from dispatcher.settings import Settings
from schemas.credentials import BedrockCredential
from tests.fakes.bedrock import ERRORS, BedrockFake, aws_error
from tests.fakes.server import FakeServer
from tests.fakes.tls import SelfSigned, self_signed
from tests.workers.providers import (
    assert_secret_kept,
    call,
    chat,
    failure,
    loopback,
)
from workers.providers.bedrock import BedrockAdapter
from workers.providers.errors import ProviderError
from workers.providers.http import new_client

MODEL = "anthropic.claude-sonnet-4-20250514-v1:0"
KEY_ID, SECRET = "AKIDTENANT0000000001", "tenant-secret-key"
TEMP_KEY_ID, TEMP_SECRET, SESSION = "ASIATENANT0000000002", "temp-secret", "session-token-xyz"
API_KEY = "ABSKtenant-bedrock-api-key"
WRONG_API_KEY = "ABSKwrong-bedrock-api-key"


def sigv4(secret: str = SECRET, key_id: str = KEY_ID, **extra: Any) -> BedrockCredential:
    return BedrockCredential(
        region="us-east-1", access_key_id=key_id, secret_access_key=secret, **extra
    )


def bearer(key: str = API_KEY) -> BedrockCredential:
    return BedrockCredential(region="us-east-1", api_key=key)


@pytest.fixture(scope="module")
def served() -> Iterator[BedrockFake]:
    fake = BedrockFake(
        API_KEY,
        keys={KEY_ID: SECRET, TEMP_KEY_ID: TEMP_SECRET},
        session_tokens={TEMP_KEY_ID: SESSION},
    )
    with fake.serve():
        yield fake


@pytest.fixture
def fake(served: BedrockFake) -> BedrockFake:
    return served.reset()


@pytest.fixture
def settings(fake: BedrockFake) -> Settings:
    return loopback(bedrock=fake.url)


@dataclass(frozen=True)
class Tls:
    url: str
    certificate: SelfSigned

    def adapter(self, settings: Settings) -> BedrockAdapter:
        """The adapter, with a client that trusts the fake's self-signed certificate only."""
        adapter = BedrockAdapter(settings)
        adapter.client = new_client(verify=self.certificate.client_context())
        return adapter


@pytest.fixture(scope="module")
def tls(served: BedrockFake, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    """The same fake, served over TLS with a self-signed certificate."""
    certificate = self_signed(tmp_path_factory.mktemp("tls"))
    with FakeServer(
        served.app, certfile=certificate.certfile, keyfile=certificate.keyfile
    ) as server:
        yield Tls(server.url, certificate)


def test_a_sigv4_signed_converse_call_is_verified_and_answered(
    fake: BedrockFake, settings: Settings
) -> None:
    request = chat(MODEL, prompt="hi there", system="be brief", max_tokens=64, stop=["\n"])
    result = call(BedrockAdapter, settings, request, sigv4())

    assert result.output == {"text": "hi there", "finish_reason": "stop", "model": MODEL}
    assert result.usage.input_tokens == 2 + 3 + 2  # input + cache read + cache write
    assert (result.usage.cached_input_tokens, result.usage.cache_write_tokens) == (3, 2)
    assert result.usage.output_tokens == 2
    assert result.usage.raw is not None and result.usage.raw["totalTokens"] == 9
    assert fake.raw_paths == ["/model/anthropic.claude-sonnet-4-20250514-v1%3A0/converse"]
    assert fake.last.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={KEY_ID}/")
    assert fake.last.json == {
        "messages": [{"role": "user", "content": [{"text": "hi there"}]}],
        "system": [{"text": "be brief"}],
        "inferenceConfig": {"maxTokens": 64, "stopSequences": ["\n"]},
    }


def test_temporary_credentials_send_their_session_token(
    fake: BedrockFake, settings: Settings
) -> None:
    call(
        BedrockAdapter,
        settings,
        chat(MODEL),
        sigv4(TEMP_SECRET, TEMP_KEY_ID, session_token=SESSION),
    )

    assert fake.last.headers["x-amz-security-token"] == SESSION


def test_a_wrong_secret_is_auth_failed(settings: Settings) -> None:
    error = failure(BedrockAdapter, settings, chat(MODEL), sigv4("not-the-secret"))

    assert (error.error_class, error.status_code) == ("auth_failed", 403)
    assert error.message.startswith("InvalidSignatureException: The request signature")


def test_an_unknown_access_key_is_auth_failed(settings: Settings) -> None:
    error = failure(BedrockAdapter, settings, chat(MODEL), sigv4(key_id="AKIDUNKNOWN000000000"))

    assert (error.error_class, error.status_code) == ("auth_failed", 403)
    assert error.message.startswith("UnrecognizedClientException")


def test_an_api_key_goes_as_a_bearer_token_over_tls(fake: BedrockFake, tls: Tls) -> None:
    result = call(tls.adapter, loopback(bedrock=tls.url), chat(MODEL, prompt="hi"), bearer())

    assert result.output["text"] == "hi"
    assert fake.last.headers["authorization"] == f"Bearer {API_KEY}"
    assert fake.last.url.startswith("https://")


def test_a_wrong_api_key_is_auth_failed_and_not_echoed(tls: Tls) -> None:
    error = failure(tls.adapter, loopback(bedrock=tls.url), chat(MODEL), bearer(WRONG_API_KEY))

    assert error.error_class == "auth_failed"
    assert_secret_kept(error, WRONG_API_KEY)


def test_the_certificate_of_a_tls_endpoint_is_verified(tls: Tls) -> None:
    error = failure(BedrockAdapter, loopback(bedrock=tls.url), chat(MODEL), bearer())

    assert error.error_class == "connection_error"


def test_an_api_key_is_never_sent_over_plain_http(fake: BedrockFake, settings: Settings) -> None:
    error = failure(BedrockAdapter, settings, chat(MODEL), bearer())

    assert error.error_class == "invalid_request"
    assert fake.requests == []


def test_the_environment_never_replaces_a_tenants_keys(
    fake: BedrockFake, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "platform-bearer-token")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDPLATFORM00000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "platform-secret")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")

    call(BedrockAdapter, settings, chat(MODEL), sigv4())
    fake.script(aws_error("ThrottlingException"))
    failure(BedrockAdapter, settings, chat(MODEL), sigv4())

    assert len(fake.requests) == 2  # one request each: no retries, whatever the environment says
    for logged in fake.requests:
        assert logged.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={KEY_ID}/")
        assert "platform" not in str(logged.headers)


@pytest.mark.parametrize(
    ("error_type", "error_class"),
    [
        ("ThrottlingException", "rate_limited"),
        ("ModelNotReadyException", "overloaded"),
        ("ServiceUnavailableException", "overloaded"),
        ("InternalServerException", "provider_error"),
        ("ModelTimeoutException", "timeout"),
        ("ModelErrorException", "provider_error"),
        ("ValidationException", "invalid_request"),
        ("AccessDeniedException", "auth_failed"),
        ("ResourceNotFoundException", "invalid_request"),
        ("ServiceQuotaExceededException", "quota_exhausted"),
        ("ExpiredTokenException", "auth_failed"),
    ],
)
def test_error_types_map_to_error_classes(
    fake: BedrockFake, settings: Settings, error_type: str, error_class: str
) -> None:
    fake.script(aws_error(error_type))
    error = failure(BedrockAdapter, settings, chat(MODEL), sigv4())

    status, message = ERRORS[error_type]
    assert (error.error_class, error.status_code) == (error_class, status)
    assert error.message == f"{error_type}: {message}"


def test_the_public_endpoint_follows_the_region_and_its_partition() -> None:
    adapter = BedrockAdapter(Settings())

    assert adapter.base("eu-west-3") == "https://bedrock-runtime.eu-west-3.amazonaws.com"
    assert adapter.base("cn-north-1") == "https://bedrock-runtime.cn-north-1.amazonaws.com.cn"
    with pytest.raises(ProviderError) as raised:
        adapter.base("evil.example.com/")
    assert raised.value.error_class == "invalid_request"
    asyncio.run(adapter.aclose())


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"access_key_id": KEY_ID},
        {"secret_access_key": SECRET},
        {"access_key_id": KEY_ID, "secret_access_key": SECRET, "api_key": API_KEY},
        {"session_token": SESSION, "api_key": API_KEY},
    ],
)
def test_a_credential_holds_exactly_one_kind_of_key(fields: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="access_key_id"):
        BedrockCredential(region="us-east-1", **fields)


@pytest.mark.parametrize("region", ["us-east-1", "eu-central-2", "cn-northwest-1", "us-gov-west-1"])
def test_a_credential_accepts_aws_regions(region: str) -> None:
    assert BedrockCredential(region=region, api_key=API_KEY).region == region


@pytest.mark.parametrize("region", ["us-east-9", "aws-global", "mars-north-1", "us-east-1\n"])
def test_a_credential_refuses_other_regions(region: str) -> None:
    with pytest.raises(ValueError, match="not an AWS region"):
        BedrockCredential(region=region, api_key=API_KEY)
