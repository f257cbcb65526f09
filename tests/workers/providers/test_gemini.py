"""The Gemini API adapter against a fake Gemini API over loopback HTTP."""

from collections.abc import Iterator

import httpx
import pytest

from dispatcher.settings import Settings
from schemas.credentials import GeminiCredential
from tests.fakes import gemini
from tests.fakes.common import Reply, bad_gateway, hung
from tests.fakes.gemini import GeminiFake
from tests.workers.providers import (
    assert_secret_kept,
    call,
    chat,
    counts,
    failure,
    loopback,
    summary,
)
from workers.providers import google_format
from workers.providers.gemini import GeminiAdapter

KEY = "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"
WRONG = "AIzaSyWr0ngWr0ngWr0ngWr0ngWr0ngWr0ng12"
MODEL = "gemini-2.5-pro"


@pytest.fixture(scope="module")
def served() -> Iterator[GeminiFake]:
    with GeminiFake(KEY).serve() as fake:
        yield fake


@pytest.fixture
def fake(served: GeminiFake) -> GeminiFake:
    return served.reset()


@pytest.fixture
def settings(fake: GeminiFake) -> Settings:
    return loopback(gemini=fake.url)


def credential(key: str = KEY) -> GeminiCredential:
    return GeminiCredential.model_validate({"api_key": key})


def test_the_key_goes_in_the_header_and_never_in_the_url(
    fake: GeminiFake, settings: Settings
) -> None:
    call(GeminiAdapter, settings, chat(MODEL), credential())
    sent = fake.last
    assert (sent.method, sent.path, sent.query) == (
        "POST",
        f"/v1beta/models/{MODEL}:generateContent",
        "",
    )
    assert sent.headers["x-goog-api-key"] == KEY
    assert KEY not in sent.url


def test_it_posts_contents_system_instruction_and_generation_config(
    fake: GeminiFake, settings: Settings
) -> None:
    request = chat(
        MODEL,
        system="Be brief.",
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": [{"type": "text", "text": "again"}]},
        ],
        max_tokens=64,
        temperature=0.2,
        stop=["END"],
    )
    call(GeminiAdapter, settings, request, credential())
    assert fake.last.json == {
        "contents": [
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "model", "parts": [{"text": "hello"}]},
            {"role": "user", "parts": [{"text": "again"}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"maxOutputTokens": 64, "temperature": 0.2, "stopSequences": ["END"]},
    }


def test_unset_options_leave_out_system_instruction_and_generation_config(
    fake: GeminiFake, settings: Settings
) -> None:
    call(GeminiAdapter, settings, chat(MODEL), credential())
    assert fake.last.json == {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}


def test_it_normalizes_the_output_and_counts_thoughts_as_output_and_reasoning(
    settings: Settings,
) -> None:
    result = call(GeminiAdapter, settings, chat(MODEL), credential())
    assert result.output == {"text": "hello", "finish_reason": "stop", "model": MODEL}
    assert counts(result.usage) == (1100, 40 + 96, 1024, 0, 96)
    assert result.usage.raw == gemini.USAGE_METADATA


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (gemini.rate_limited("37s"), ("rate_limited", 429, 37.0)),
        (gemini.rate_limited(None), ("rate_limited", 429, None)),
        (gemini.rate_limited("2.5s", per_day=True), ("quota_exhausted", 429, 2.5)),
        (gemini.unavailable(), ("overloaded", 503, None)),
        (gemini.internal(), ("provider_error", 500, None)),
        (bad_gateway(), ("provider_error", 502, None)),
    ],
    ids=["429-retry-info", "429-bare", "per-day-quota", "503", "500", "502-html"],
)
def test_each_error_answer_maps_to_its_class_status_and_retry_after(
    fake: GeminiFake, settings: Settings, reply: Reply, expected: tuple[object, ...]
) -> None:
    fake.script(reply)
    error = failure(GeminiAdapter, settings, chat(MODEL), credential())
    assert summary(error) == expected


def test_the_provider_message_is_kept(fake: GeminiFake, settings: Settings) -> None:
    fake.script(gemini.unavailable())
    error = failure(GeminiAdapter, settings, chat(MODEL), credential())
    assert error.message == "The model is overloaded. Please try again later."


@pytest.mark.parametrize("echo_key", [False, True], ids=["plain", "echoed"])
def test_an_invalid_key_is_auth_failed_and_never_quoted(
    fake: GeminiFake, settings: Settings, echo_key: bool
) -> None:
    fake.echo_key = echo_key
    error = failure(GeminiAdapter, settings, chat(MODEL), credential(WRONG))
    assert (error.error_class, error.status_code) == ("auth_failed", 400)
    assert error.message.startswith("API key not valid")
    assert_secret_kept(error, WRONG)


def test_a_hung_answer_is_a_timeout(fake: GeminiFake, settings: Settings) -> None:
    fake.script(hung(5))
    error = failure(GeminiAdapter, settings, chat(MODEL, timeout_s=0.2), credential())
    assert error.error_class == "timeout"


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        (403, "PERMISSION_DENIED", "auth_failed"),
        (401, "UNAUTHENTICATED", "auth_failed"),
        (504, "DEADLINE_EXCEEDED", "timeout"),
        (400, "INVALID_ARGUMENT", "invalid_request"),
        (400, "FAILED_PRECONDITION", "invalid_request"),
        (502, None, "provider_error"),
    ],
)
def test_google_statuses_map_to_error_classes(code: int, status: str | None, expected: str) -> None:
    answer = httpx.Response(code, json={"error": {"code": code, "message": "m", "status": status}})
    assert google_format.error_for(answer).error_class == expected


@pytest.mark.parametrize(
    ("body", "finish_reason"),
    [
        ({"candidates": [{"finishReason": "MAX_TOKENS"}]}, "length"),
        ({"candidates": [{"finishReason": "SAFETY"}]}, "content_filter"),
        ({"candidates": [{"finishReason": "MALFORMED_FUNCTION_CALL"}]}, "malformed_function_call"),
        ({"promptFeedback": {"blockReason": "SAFETY"}}, "content_filter"),
    ],
)
def test_finish_reasons_are_normalized_and_a_blocked_prompt_is_filtered(
    body: dict[str, object], finish_reason: str
) -> None:
    output = google_format.generate_content_result(body, MODEL).output
    assert output == {"text": "", "finish_reason": finish_reason, "model": MODEL}


def test_thought_parts_are_left_out_of_the_text() -> None:
    parts = [{"text": "thinking...", "thought": True}, {"text": "answer"}]
    body = {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}]}
    assert google_format.generate_content_result(body, MODEL).output["text"] == "answer"
