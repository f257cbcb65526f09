"""The Azure OpenAI adapter against a fake Azure resource over loopback HTTP."""

from collections.abc import Iterator

import pytest

from dispatcher.settings import Settings
from schemas.credentials import AzureOpenAICredential
from tests.fakes import azure_openai, openai
from tests.fakes.azure_openai import AzureOpenAIFake
from tests.fakes.common import Reply, hung
from tests.workers.providers import (
    assert_secret_kept,
    call,
    chat,
    counts,
    failure,
    loopback,
    summary,
)
from workers.providers.azure_openai import AzureOpenAIAdapter

KEY = "3f9c1a7be25d4c08a6e1f0b2d4c6e8a0"
WRONG = "0a8e6c4d2b0f1e6a80c4d52eb7a1c9f3"
VERSION = "2024-10-21"
DEPLOYMENTS = {"gpt-4o-mini": "prod-mini"}


@pytest.fixture(scope="module")
def served() -> Iterator[AzureOpenAIFake]:
    fake = AzureOpenAIFake(KEY, deployments={"prod-mini": "gpt-4o-mini-2024-07-18"})
    with fake.serve():
        yield fake


@pytest.fixture
def fake(served: AzureOpenAIFake) -> AzureOpenAIFake:
    return served.reset()


@pytest.fixture
def settings() -> Settings:
    return loopback()


def credential(
    fake: AzureOpenAIFake, *, api_version: str | None = VERSION, key: str = KEY, endpoint: str = ""
) -> AzureOpenAICredential:
    return AzureOpenAICredential(
        endpoint=endpoint or f"{fake.url}/",
        api_key=key,
        api_version=api_version,
        deployments=DEPLOYMENTS,
    )


def test_the_classic_route_names_the_deployment_and_api_version_with_an_api_key_header(
    fake: AzureOpenAIFake, settings: Settings
) -> None:
    call(AzureOpenAIAdapter, settings, chat("gpt-4o-mini", max_tokens=9), credential(fake))
    sent = fake.last
    assert (sent.method, sent.path) == ("POST", "/openai/deployments/prod-mini/chat/completions")
    assert sent.query == f"api-version={VERSION}"
    assert sent.headers["api-key"] == KEY
    assert "authorization" not in sent.headers
    assert sent.json == {
        "model": "prod-mini",
        "messages": [{"role": "user", "content": "hello"}],
        "max_completion_tokens": 9,
    }


def test_the_v1_route_sends_a_bearer_key_and_the_deployment_as_model(
    fake: AzureOpenAIFake, settings: Settings
) -> None:
    call(AzureOpenAIAdapter, settings, chat("gpt-4o-mini"), credential(fake, api_version=None))
    sent = fake.last
    assert (sent.path, sent.query) == ("/openai/v1/chat/completions", "")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert "api-key" not in sent.headers
    assert sent.json["model"] == "prod-mini"


def test_a_model_without_a_mapped_deployment_is_its_own_deployment_name(
    fake: AzureOpenAIFake, settings: Settings
) -> None:
    error = failure(AzureOpenAIAdapter, settings, chat("gpt-4.1"), credential(fake))
    assert fake.last.path == "/openai/deployments/gpt-4.1/chat/completions"
    assert summary(error) == ("invalid_request", 404, None)
    assert "deployment" in error.message


def test_it_normalizes_the_output_and_the_usage(fake: AzureOpenAIFake, settings: Settings) -> None:
    result = call(AzureOpenAIAdapter, settings, chat("gpt-4o-mini"), credential(fake))
    assert result.output == {
        "text": "hello",
        "finish_reason": "stop",
        "model": "gpt-4o-mini-2024-07-18",
    }
    assert counts(result.usage) == (1230, 75, 1024, 0, 32)
    assert result.usage.raw == openai.USAGE


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (azure_openai.rate_limited(6), ("rate_limited", 429, 6.0)),
        (azure_openai.rate_limited(4, ("retry-after-ms",)), ("rate_limited", 429, 4.0)),
        (azure_openai.rate_limited(3, ("x-ms-retry-after-ms",)), ("rate_limited", 429, 3.0)),
        (azure_openai.rate_limited(8, ()), ("rate_limited", 429, 8.0)),
        (azure_openai.server_error(500), ("provider_error", 500, None)),
        (azure_openai.server_error(503), ("overloaded", 503, None)),
    ],
    ids=["retry-after", "retry-after-ms", "x-ms-retry-after-ms", "message-only", "500", "503"],
)
def test_each_error_answer_maps_to_its_class_status_and_retry_after(
    fake: AzureOpenAIFake, settings: Settings, reply: Reply, expected: tuple[object, ...]
) -> None:
    fake.script(reply)
    error = failure(AzureOpenAIAdapter, settings, chat("gpt-4o-mini"), credential(fake))
    assert summary(error) == expected


@pytest.mark.parametrize("api_version", [VERSION, None], ids=["classic", "v1"])
def test_a_wrong_key_is_auth_failed_and_never_quoted(
    fake: AzureOpenAIFake, settings: Settings, api_version: str | None
) -> None:
    fake.echo_key = True
    given = credential(fake, api_version=api_version, key=WRONG)
    error = failure(AzureOpenAIAdapter, settings, chat("gpt-4o-mini"), given)
    assert (error.error_class, error.status_code) == ("auth_failed", 401)
    assert error.message.startswith("Access denied")
    assert_secret_kept(error, WRONG)


def test_a_hung_answer_is_a_timeout(fake: AzureOpenAIFake, settings: Settings) -> None:
    fake.script(hung(5))
    request = chat("gpt-4o-mini", timeout_s=0.2)
    error = failure(AzureOpenAIAdapter, settings, request, credential(fake))
    assert error.error_class == "timeout"


@pytest.mark.parametrize(
    "endpoint",
    ["https://tenant.openai.azure.com.evil.example", "http://tenant.openai.azure.com"],
)
def test_an_endpoint_off_the_allow_list_is_refused(fake: AzureOpenAIFake, endpoint: str) -> None:
    given = credential(fake, endpoint=endpoint)
    error = failure(AzureOpenAIAdapter, Settings(), chat("gpt-4o-mini"), given)
    assert error.error_class == "invalid_request"


def test_a_loopback_endpoint_is_refused_unless_loopback_is_allow_listed(
    fake: AzureOpenAIFake,
) -> None:
    error = failure(AzureOpenAIAdapter, Settings(), chat("gpt-4o-mini"), credential(fake))
    assert error.error_class == "invalid_request"
    assert fake.requests == []
