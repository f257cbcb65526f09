"""The shared provider plumbing: clients, error translation, retry delays, secrets, allow-lists."""

import asyncio
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from schemas.credentials import GeminiCredential
from schemas.inference import InferenceRequest
from tests.fakes.server import FakeServer
from workers.providers.errors import ProviderError
from workers.providers.http import (
    chat_input,
    credential_as,
    dig,
    int_at,
    json_body,
    new_client,
    request_json,
    require_allowed,
    retry_after_s,
    scrub,
    system_and_turns,
    text_of,
    transport_errors,
)

SECRET = "sk-live-0123456789abcdef"
CONCURRENT = 120  # more than the default pools of httpx and aiohttp (100 connections each)


class Barrier:
    """Holds each call until ``CONCURRENT`` calls are in at once (or a deadline passes)."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0

    async def endpoint(self, request: Request) -> Response:
        if request.url.path == "/html":
            return HTMLResponse("<html>ok</html>")
        self.inside += 1
        self.most = max(self.most, self.inside)
        try:
            for _ in range(100):
                if self.most >= CONCURRENT:
                    break
                await asyncio.sleep(0.02)
            return JSONResponse({"most": self.most})
        finally:
            self.inside -= 1


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Barrier, str]]:
    barrier = Barrier()
    app = Starlette(routes=[Route("/{path:path}", barrier.endpoint, methods=["GET", "POST"])])
    with FakeServer(app) as served:
        yield barrier, served.url


def _never(response: httpx.Response) -> ProviderError:
    raise AssertionError("no error answer expected")


def _get(url: str, **kwargs: Any) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async with new_client() as used:
            return await request_json(used, "GET", url, on_error=_never, **kwargs)

    return asyncio.run(run())


def _failure(url: str, **kwargs: Any) -> ProviderError:
    with pytest.raises(ProviderError) as raised:
        _get(url, **kwargs)
    return raised.value


def test_one_client_holds_more_calls_in_flight_than_httpx_default_pool(
    server: tuple[Barrier, str],
) -> None:
    barrier, url = server

    async def run() -> list[dict[str, Any]]:
        async with new_client() as client:
            calls = [request_json(client, "GET", url, on_error=_never) for _ in range(CONCURRENT)]
            return await asyncio.gather(*calls)

    answers = asyncio.run(run())
    assert len(answers) == CONCURRENT and barrier.most >= CONCURRENT


def test_a_refused_connection_is_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = _failure(f"http://127.0.0.1:{port}/")
    assert (error.error_class, error.status_code) == ("connection_error", None)
    assert "ConnectError" in error.message


def test_a_timeout_is_translated_with_a_scrubbed_message() -> None:
    with pytest.raises(ProviderError) as raised, transport_errors([SECRET]):
        raise httpx.ReadTimeout(f"timed out reading for {SECRET}")

    assert raised.value.error_class == "timeout"
    assert SECRET[:8] not in raised.value.message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_a_success_that_is_not_json_is_a_provider_error(server: tuple[Barrier, str]) -> None:
    error = _failure(f"{server[1]}/html")
    assert (error.error_class, error.status_code) == ("provider_error", 200)


def _answer(headers: dict[str, str] | None = None, body: Any = None) -> httpx.Response:
    return httpx.Response(429, headers=headers, json=body)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after-ms": "1500", "retry-after": "2"}, 1.5),
        ({"x-ms-retry-after-ms": "250"}, 0.25),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
    ids=["seconds", "ms-first", "x-ms", "garbage", "none"],
)
def test_retry_after_reads_every_header_providers_use(
    headers: dict[str, str], seconds: float | None
) -> None:
    assert retry_after_s(_answer(headers)) == seconds


def test_retry_after_reads_an_http_date() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    delay = retry_after_s(_answer({"retry-after": when}))
    assert delay is not None and 25 <= delay <= 30


@pytest.mark.parametrize(("delay", "seconds"), [("37s", 37.0), ("0.5s", 0.5), ("soon", None)])
def test_retry_after_reads_google_retry_info(delay: str, seconds: float | None) -> None:
    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}
    body = {"error": {"code": 429, "details": [{"@type": "x.Help"}, retry_info]}}
    assert retry_after_s(_answer(body=body)) == seconds


def test_scrub_masks_the_secret_and_its_first_eight_characters() -> None:
    text = f"key {SECRET} or {SECRET[:8]}***cdef"
    assert scrub(text, [SECRET, ""]) == "key [redacted] or [redacted]***cdef"


@pytest.mark.parametrize(
    "url",
    ["https://evil.example.com/v1", "http://api.example.com", "https://u:secret@api.example.com"],
)
def test_require_allowed_refuses_other_hosts_plain_http_and_user_info(url: str) -> None:
    with pytest.raises(ProviderError) as raised:
        require_allowed(url, ["api.example.com"])
    assert raised.value.error_class == "invalid_request"
    assert "secret" not in raised.value.message


def test_require_allowed_returns_the_url_without_its_trailing_slash() -> None:
    assert (
        require_allowed("https://a.example.com/x/", ["*.example.com"]) == "https://a.example.com/x"
    )


def test_credential_as_takes_the_model_or_a_dict_and_refuses_anything_else() -> None:
    model = GeminiCredential.model_validate({"api_key": SECRET})
    assert credential_as(model, GeminiCredential) is model
    assert credential_as({"api_key": SECRET}, GeminiCredential).api_key.get_secret_value() == SECRET
    for wrong in (None, {"api_key": SECRET, "stray": 1}):
        with pytest.raises(ProviderError) as raised:
            credential_as(wrong, GeminiCredential)
        assert raised.value.error_class == "auth_failed" and SECRET not in raised.value.message


def test_dig_and_int_at_walk_json_and_tolerate_missing_parts() -> None:
    body = {"choices": [{"message": {"content": "hi"}}], "usage": {"n": 3, "flag": True}}
    assert dig(body, "choices", 0, "message", "content") == "hi"
    assert dig(body, "choices", 1, "message") is None
    assert dig(body, "usage", "n", "deeper") is None
    assert (int_at(body, "usage", "n"), int_at(body, "usage", "flag"), int_at(None, "x")) == (
        3,
        0,
        0,
    )


def _request(**input: Any) -> InferenceRequest:
    return InferenceRequest(app="a/b", model="m", input=input)


def test_chat_input_refuses_an_input_without_turns_or_of_the_wrong_shape() -> None:
    for bad in (_request(), _request(messages="hi"), _request(prompt="x", max_tokens=0)):
        with pytest.raises(ProviderError) as raised:
            chat_input(bad)
        assert raised.value.error_class == "invalid_request"


def test_system_and_turns_gathers_system_and_developer_prompts() -> None:
    chat = chat_input(
        _request(
            system="one",
            messages=[
                {"role": "developer", "content": [{"type": "text", "text": "two"}]},
                {"role": "user", "content": "hi"},
            ],
        )
    )
    system, turns = system_and_turns(chat)
    assert system == "one\n\ntwo"
    assert [(turn.role, turn.content) for turn in turns] == [("user", "hi")]


def test_text_of_reads_strings_and_text_parts() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]
    assert (text_of("x"), text_of(parts), text_of(None)) == ("x", "ab", "")


def test_an_answer_is_read_with_every_integer_exact() -> None:
    """A provider's number beyond 64 bits stays an integer (orjson alone would make it a
    float, losing digits, in the output the run stores)."""
    answer = httpx.Response(200, content=b'{"id": 12345678901234567890123, "n": [1, 2.5]}')
    assert json_body(answer) == {"id": 12345678901234567890123, "n": [1, 2.5]}
