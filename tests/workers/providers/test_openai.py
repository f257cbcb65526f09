"""The OpenAI adapter against a fake OpenAI over loopback HTTP."""

from collections.abc import Iterator

import pytest

from dispatcher.settings import Settings
from schemas.credentials import OpenAICredential
from tests.fakes import openai
from tests.fakes.common import Reply, bad_gateway, hung
from tests.fakes.openai import OpenAIFake
from tests.workers.providers import (
    assert_secret_kept,
    call,
    chat,
    counts,
    failure,
    loopback,
    summary,
)
from workers.providers.openai import OpenAIAdapter

KEY = "sk-proj-Zq3vR8tY1uI0oP9aS7dF6gH5jK4l"
WRONG = "sk-proj-Wr0ngWr0ngWr0ngWr0ngWr0ng12"


@pytest.fixture(scope="module")
def served() -> Iterator[OpenAIFake]:
    with OpenAIFake(KEY).serve() as fake:
        yield fake


@pytest.fixture
def fake(served: OpenAIFake) -> OpenAIFake:
    return served.reset()


@pytest.fixture
def settings(fake: OpenAIFake) -> Settings:
    return loopback(openai=fake.url)


def credential(key: str = KEY, **fields: str) -> OpenAICredential:
    return OpenAICredential.model_validate({"api_key": key, **fields})


def test_it_posts_the_chat_body_with_bearer_key_organization_and_project(
    fake: OpenAIFake, settings: Settings
) -> None:
    request = chat(
        "gpt-4o-mini",
        system="Be brief.",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=64,
        temperature=0.2,
        stop=["END"],
    )
    call(OpenAIAdapter, settings, request, credential(organization="org-1", project="proj_1"))
    sent = fake.last
    assert (sent.method, sent.path, sent.query) == ("POST", "/v1/chat/completions", "")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert (sent.headers["openai-organization"], sent.headers["openai-project"]) == (
        "org-1",
        "proj_1",
    )
    assert sent.json == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
        ],
        "max_completion_tokens": 64,
        "temperature": 0.2,
        "stop": ["END"],
    }


def test_it_leaves_unset_options_and_headers_out(fake: OpenAIFake, settings: Settings) -> None:
    call(OpenAIAdapter, settings, chat("gpt-4o-mini", prompt="hello"), credential())
    assert fake.last.json == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hello"}],
    }
    assert "openai-organization" not in fake.last.headers
    assert "openai-project" not in fake.last.headers


def test_it_normalizes_the_output_and_the_usage_with_cached_and_reasoning_tokens(
    settings: Settings,
) -> None:
    result = call(OpenAIAdapter, settings, chat("gpt-4o-mini", prompt="hello"), credential())
    assert result.output == {"text": "hello", "finish_reason": "stop", "model": openai.MODEL}
    assert counts(result.usage) == (1230, 75, 1024, 0, 32)
    assert result.usage.raw == openai.USAGE


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (openai.rate_limited("7"), ("rate_limited", 429, 7.0)),
        (openai.rate_limited(), ("rate_limited", 429, None)),
        (openai.insufficient_quota(), ("quota_exhausted", 429, None)),
        (openai.server_error(500), ("provider_error", 500, None)),
        (openai.server_error(503), ("overloaded", 503, None)),
        (bad_gateway(), ("provider_error", 502, None)),
    ],
    ids=["429-retry-after", "429-bare", "insufficient-quota", "500", "503", "502-html"],
)
def test_each_error_answer_maps_to_its_class_status_and_retry_after(
    fake: OpenAIFake, settings: Settings, reply: Reply, expected: tuple[object, ...]
) -> None:
    fake.script(reply)
    error = failure(OpenAIAdapter, settings, chat("gpt-4o-mini"), credential())
    assert summary(error) == expected
    assert error.message


def test_the_provider_message_is_kept(fake: OpenAIFake, settings: Settings) -> None:
    fake.script(openai.insufficient_quota())
    error = failure(OpenAIAdapter, settings, chat("gpt-4o-mini"), credential())
    assert error.message.startswith("You exceeded your current quota")


@pytest.mark.parametrize("echo_key", [False, True], ids=["masked", "echoed"])
def test_a_wrong_key_is_auth_failed_and_never_quoted(
    fake: OpenAIFake, settings: Settings, echo_key: bool
) -> None:
    fake.echo_key = echo_key
    error = failure(OpenAIAdapter, settings, chat("gpt-4o-mini"), credential(WRONG))
    assert (error.error_class, error.status_code) == ("auth_failed", 401)
    assert "Incorrect API key provided" in error.message
    assert_secret_kept(error, WRONG)


def test_a_hung_answer_is_a_timeout(fake: OpenAIFake, settings: Settings) -> None:
    fake.script(hung(5))
    error = failure(OpenAIAdapter, settings, chat("gpt-4o-mini", timeout_s=0.2), credential())
    assert error.error_class == "timeout"


def test_an_allow_listed_base_url_replaces_the_default_and_may_end_in_v1(fake: OpenAIFake) -> None:
    settings = loopback(openai="http://127.0.0.1:9")
    call(OpenAIAdapter, settings, chat("m"), credential(base_url=f"{fake.url}/v1/"))
    assert fake.last.path == "/v1/chat/completions"


@pytest.mark.parametrize(
    "base_url",
    ["https://evil.example.com", "http://api.openai.com", "https://user:pw@api.openai.com"],
)
def test_a_base_url_off_the_allow_list_is_refused_without_a_call(
    fake: OpenAIFake, base_url: str
) -> None:
    settings = Settings(provider_hosts=["api.openai.com"])
    error = failure(OpenAIAdapter, settings, chat("m"), credential(base_url=base_url))
    assert error.error_class == "invalid_request"
    assert "allow-list" in error.message and "pw" not in error.message


def test_a_loopback_base_url_is_refused_unless_loopback_is_allow_listed(fake: OpenAIFake) -> None:
    settings = Settings(provider_hosts=["api.openai.com"])
    error = failure(OpenAIAdapter, settings, chat("m"), credential(base_url=fake.url))
    assert error.error_class == "invalid_request"
    assert fake.requests == []


def test_a_credential_given_as_a_dict_is_accepted(fake: OpenAIFake, settings: Settings) -> None:
    call(OpenAIAdapter, settings, chat("m"), {"provider": "openai", "api_key": KEY})
    assert fake.last.headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("given", [None, {"api_key": 5, "extra": KEY}], ids=["none", "invalid"])
def test_a_missing_or_invalid_credential_is_auth_failed_without_quoting_it(
    fake: OpenAIFake, settings: Settings, given: object
) -> None:
    error = failure(OpenAIAdapter, settings, chat("m"), given)
    assert error.error_class == "auth_failed"
    assert_secret_kept(error, KEY)
    assert fake.requests == []


def test_an_input_without_turns_is_invalid_without_a_call(
    fake: OpenAIFake, settings: Settings
) -> None:
    error = failure(OpenAIAdapter, settings, chat("m", messages=[]), credential())
    assert error.error_class == "invalid_request"
    assert fake.requests == []
