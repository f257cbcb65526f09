"""The Anthropic adapter against a fake Messages API over loopback HTTP."""

from collections.abc import Iterator

import pytest

from dispatcher.settings import Settings
from schemas.credentials import AnthropicCredential
from tests.fakes import anthropic
from tests.fakes.anthropic import AnthropicFake
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
from workers.providers.anthropic import AnthropicAdapter

KEY = "sk-ant-api03-Yx8qW2eR4tY6uI8oP0aS2dF4gH6jK8lZ"
WRONG = "sk-ant-api03-Wr0ngWr0ngWr0ngWr0ngWr0ngWr0ng1"
MODEL = "claude-sonnet-4-20250514"


@pytest.fixture(scope="module")
def served() -> Iterator[AnthropicFake]:
    with AnthropicFake(KEY).serve() as fake:
        yield fake


@pytest.fixture
def fake(served: AnthropicFake) -> AnthropicFake:
    return served.reset()


@pytest.fixture
def settings(fake: AnthropicFake) -> Settings:
    return loopback(anthropic=fake.url)


def credential(key: str = KEY) -> AnthropicCredential:
    return AnthropicCredential.model_validate({"api_key": key})


def test_it_posts_messages_with_the_key_and_version_headers_and_a_top_level_system(
    fake: AnthropicFake, settings: Settings
) -> None:
    request = chat(
        MODEL,
        system="Be brief.",
        messages=[
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": "salut"},
            {"role": "user", "content": "again"},
        ],
        max_tokens=64,
        temperature=0.2,
        stop=["END"],
    )
    call(AnthropicAdapter, settings, request, credential())
    sent = fake.last
    assert (sent.method, sent.path) == ("POST", "/v1/messages")
    assert (sent.headers["x-api-key"], sent.headers["anthropic-version"]) == (KEY, "2023-06-01")
    assert "authorization" not in sent.headers
    assert sent.json == {
        "model": MODEL,
        "max_tokens": 64,
        "system": "Be brief.\n\nAnswer in French.",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "salut"},
            {"role": "user", "content": "again"},
        ],
        "temperature": 0.2,
        "stop_sequences": ["END"],
    }


def test_max_tokens_defaults_and_temperature_is_clamped_to_one(
    fake: AnthropicFake, settings: Settings
) -> None:
    call(AnthropicAdapter, settings, chat(MODEL, temperature=1.7), credential())
    assert fake.last.json == {
        "model": MODEL,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "hello"}],
        "temperature": 1.0,
    }


def test_it_normalizes_the_output_and_counts_cache_reads_and_writes_as_input(
    settings: Settings,
) -> None:
    result = call(AnthropicAdapter, settings, chat(MODEL), credential())
    assert result.output == {"text": "hello", "finish_reason": "stop", "model": MODEL}
    assert counts(result.usage) == (21 + 1024 + 188, 57, 1024, 188, 0)
    assert result.usage.raw == anthropic.USAGE


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (anthropic.rate_limited("12"), ("rate_limited", 429, 12.0)),
        (anthropic.rate_limited(), ("rate_limited", 429, None)),
        (anthropic.spend_limit(), ("quota_exhausted", 429, None)),
        (anthropic.overloaded(), ("overloaded", 529, None)),
        (anthropic.api_error(500), ("provider_error", 500, None)),
    ],
    ids=["429-retry-after", "429-bare", "spend-limit", "529", "500"],
)
def test_each_error_answer_maps_to_its_class_status_and_retry_after(
    fake: AnthropicFake, settings: Settings, reply: Reply, expected: tuple[object, ...]
) -> None:
    fake.script(reply)
    error = failure(AnthropicAdapter, settings, chat(MODEL), credential())
    assert summary(error) == expected


def test_the_provider_message_is_kept(fake: AnthropicFake, settings: Settings) -> None:
    fake.script(anthropic.overloaded())
    assert failure(AnthropicAdapter, settings, chat(MODEL), credential()).message == "Overloaded"


@pytest.mark.parametrize("echo_key", [False, True], ids=["plain", "echoed"])
def test_a_wrong_key_is_auth_failed_and_never_quoted(
    fake: AnthropicFake, settings: Settings, echo_key: bool
) -> None:
    fake.echo_key = echo_key
    error = failure(AnthropicAdapter, settings, chat(MODEL), credential(WRONG))
    assert (error.error_class, error.status_code) == ("auth_failed", 401)
    assert "invalid x-api-key" in error.message
    assert_secret_kept(error, WRONG)


def test_a_hung_answer_is_a_timeout(fake: AnthropicFake, settings: Settings) -> None:
    fake.script(hung(5))
    error = failure(AnthropicAdapter, settings, chat(MODEL, timeout_s=0.2), credential())
    assert error.error_class == "timeout"
