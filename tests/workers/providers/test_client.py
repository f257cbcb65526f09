"""The client under every adapter, against raw loopback servers: what goes on the
wire, connections kept and not retried, and each way a call can fail, as ``request_json``
reports it."""

import asyncio
import gzip
import json
from asyncio import StreamReader, StreamWriter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.fakes.server import FakeServer
from tests.fakes.tls import SelfSigned, self_signed
from workers.providers.errors import ProviderError
from workers.providers.http import error_from, new_client, request_json

SECRET = "sk-live-0123456789abcdef"
OK = b'{"ok": true}'
Answer = Callable[["Raw", StreamReader, StreamWriter], Awaitable[None]]


class Raw:
    """A loopback HTTP/1.1 server run by ``answer(raw, reader, writer)`` per connection; it
    counts connections and keeps every request it read, head and body."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.done = asyncio.Event()
        self.url = ""
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, reader: StreamReader, writer: StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with suppress(asyncio.IncompleteReadError, ConnectionError):
            await self.answer(self, reader, writer)
        writer.close()

    async def read(self, reader: StreamReader) -> bytes:
        """One request: its head and its body (sized, or chunked: then as it came)."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        if b"transfer-encoding: chunked" in lines:
            body = await reader.readuntil(b"\r\n0\r\n\r\n")
        else:
            sized = [line for line in lines if line.startswith(b"content-length:")]
            body = await reader.readexactly(int(sized[0].split(b":")[1]) if sized else 0)
        self.requests.append(head + body)
        return head + body

    async def stall(self) -> None:
        """Hold until the test ends (or 5 s): a call bounded by its timeout never sees the end."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), 5)

    async def close(self) -> None:
        self.done.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@asynccontextmanager
async def serving(answer: Answer) -> AsyncIterator[Raw]:
    raw = Raw(answer)
    server = await asyncio.start_server(raw.serve, "127.0.0.1", 0)
    raw.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield raw
    finally:
        server.close()
        await raw.close()


def head(status: str, length: int, *extra: str) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {length}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def answer_ok(raw: Raw, reader: StreamReader, writer: StreamWriter) -> None:
    """Answer every request on the connection with ``OK``, keeping it open."""
    while True:
        await raw.read(reader)
        writer.write(head("200 OK", len(OK), "Content-Type: application/json") + OK)
        await writer.drain()


def _as_error(response: httpx.Response) -> ProviderError:
    return ProviderError("provider_error", f"HTTP {response.status_code}")


def call(
    answer: Answer, times: int = 1, **kwargs: Any
) -> tuple[Raw, list[dict[str, Any] | ProviderError]]:
    """``times`` calls in turn through one client; each one's JSON object or ``ProviderError``."""
    kwargs.setdefault("method", "GET")
    kwargs.setdefault("on_error", _as_error)
    path = kwargs.pop("path", "/")

    async def run() -> tuple[Raw, list[dict[str, Any] | ProviderError]]:
        outcomes: list[dict[str, Any] | ProviderError] = []
        async with serving(answer) as raw, new_client() as client:
            for _ in range(times):
                try:
                    outcomes.append(await request_json(client, url=raw.url + path, **kwargs))
                except ProviderError as error:
                    outcomes.append(error)
        return raw, outcomes

    return asyncio.run(run())


def failure(answer: Answer, **kwargs: Any) -> ProviderError:
    _, (outcome,) = call(answer, **kwargs)
    assert isinstance(outcome, ProviderError), outcome
    return outcome


def test_the_request_goes_out_as_the_adapter_wrote_it() -> None:
    raw, outcomes = call(
        answer_ok,
        method="POST",
        path="/v1/models/a%2Fb:run?q=a%20b&k=%C3%A9",
        headers={"X-Mixed-Case": "v", "authorization": f"Bearer {SECRET}"},
        json={"prompt": "hé"},
    )

    assert outcomes == [{"ok": True}]
    request_head, body = raw.requests[0].split(b"\r\n\r\n")
    line, *lines = request_head.split(b"\r\n")
    assert line == b"POST /v1/models/a%2Fb:run?q=a%20b&k=%C3%A9 HTTP/1.1"
    assert b"X-Mixed-Case: v" in lines
    assert f"authorization: Bearer {SECRET}".encode() in lines
    assert [x for x in lines if x.lower().startswith(b"host:")] == [
        f"Host: {raw.url.removeprefix('http://')}".encode()
    ]
    assert [x for x in lines if x.lower().startswith(b"user-agent:")] == [
        b"User-Agent: byok-dispatcher/1"
    ]
    assert b"Accept-Encoding: gzip, deflate" in lines
    assert f"Content-Length: {len(body)}".encode() in lines
    assert json.loads(body) == {"prompt": "hé"}
    assert b"aiohttp" not in raw.requests[0].lower()
    assert not any(x.lower().startswith(b"transfer-encoding") for x in lines)


def test_calls_in_turn_share_one_kept_alive_connection() -> None:
    raw, outcomes = call(answer_ok, times=5)

    assert outcomes == [{"ok": True}] * 5
    assert (raw.connections, len(raw.requests)) == (1, 5)


def test_a_redirect_is_answered_not_followed() -> None:
    async def redirect(raw: Raw, reader: StreamReader, writer: StreamWriter) -> None:
        await raw.read(reader)
        writer.write(head("307 Temporary Redirect", 0, f"Location: {raw.url}/elsewhere"))
        await writer.drain()
        await raw.read(reader)

    raw, (error,) = call(redirect)

    assert isinstance(error, ProviderError)
    assert (error.error_class, error.status_code) == ("provider_error", 307)
    assert len(raw.requests) == 1


def test_a_gzip_answer_is_decoded_once() -> None:
    packed = gzip.compress(OK)

    async def gzipped(raw: Raw, reader: StreamReader, writer: StreamWriter) -> None:
        await raw.read(reader)
        writer.write(head("200 OK", len(packed), "Content-Encoding: gzip") + packed)
        await writer.drain()

    _, outcomes = call(gzipped)

    assert outcomes == [{"ok": True}]


def test_an_answer_that_does_not_decode_is_a_provider_error() -> None:
    async def not_gzip(raw: Raw, reader: StreamReader, writer: StreamWriter) -> None:
        await raw.read(reader)
        writer.write(head("200 OK", len(OK), "Content-Encoding: gzip") + OK)
        await writer.drain()

    error = failure(not_gzip)

    assert error.error_class == "provider_error"
    assert error.message.startswith("DecodingError")


def test_an_error_answer_goes_through_the_mapping_and_loses_the_secret() -> None:
    async def echo(raw: Raw, reader: StreamReader, writer: StreamWriter) -> None:
        request = await raw.read(reader)
        key = next(
            line.split(b": ", 1)[1].decode()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"x-key:")
        )
        body = json.dumps({"message": f"bad key {key}, {key[:8]}..."}).encode()
        writer.write(head("401 Unauthorized", len(body), "Content-Type: application/json") + body)
        await writer.drain()

    def mapping(response: httpx.Response) -> ProviderError:
        return error_from(response, "auth_failed", response.json()["message"])

    _, (error,) = call(echo, headers={"x-key": SECRET}, on_error=mapping, secrets=[SECRET])

    assert isinstance(error, ProviderError)
    assert (error.error_class, error.status_code) == ("auth_failed", 401)
    assert error.message == "bad key [redacted], [redacted]..."


def test_a_connection_dropped_before_the_answer_is_a_connection_error_sent_once() -> None:
    async def hang_up(raw: Raw, reader: StreamReader, writer: StreamWriter) -> None:
        await raw.read(reader)

    raw, (error,) = call(hang_up, method="GET")

    assert isinstance(error, ProviderError)
    assert (error.error_class, error.status_code) == ("connection_error", None)
    assert error.message.startswith("RemoteProtocolError")
    assert len(raw.requests) == 1  # the queue owns retries, even of a GET


def test_an_answer_cut_short_is_a_connection_error() -> None:
    async def cut(raw: Raw, reader: StreamReader, writer: StreamWriter) -> None:
        await raw.read(reader)
        writer.write(head("200 OK", 100) + OK)
        await writer.drain()

    error = failure(cut)

    assert error.error_class == "connection_error"
    assert error.message.startswith("RemoteProtocolError")


def test_a_malformed_answer_is_a_connection_error() -> None:
    async def garbled(raw: Raw, reader: StreamReader, writer: StreamWriter) -> None:
        await raw.read(reader)
        writer.write(b"HTTP/1.1 abc\r\n\r\n")
        await writer.drain()

    error = failure(garbled)

    assert error.error_class == "connection_error"
    assert error.message.startswith("RemoteProtocolError: Bad status line")


def test_no_answer_within_the_request_timeout_is_a_timeout() -> None:
    async def slow(raw: Raw, reader: StreamReader, writer: StreamWriter) -> None:
        await raw.read(reader)
        await raw.stall()
        writer.write(head("200 OK", len(OK)) + OK)

    error = failure(slow, timeout_s=0.2)

    assert error.error_class == "timeout"
    assert error.message.startswith("ReadTimeout")


def test_a_body_that_stops_arriving_is_a_timeout() -> None:
    async def stalls(raw: Raw, reader: StreamReader, writer: StreamWriter) -> None:
        await raw.read(reader)
        writer.write(head("200 OK", len(OK)) + OK[:4])
        await writer.drain()
        await raw.stall()
        writer.write(OK[4:])

    error = failure(stalls, timeout_s=0.2)

    assert error.error_class == "timeout"
    assert error.message.startswith("ReadTimeout")


def test_a_tls_handshake_that_never_completes_is_a_timeout() -> None:
    async def mute(raw: Raw, reader: StreamReader, writer: StreamWriter) -> None:
        await raw.stall()

    async def run() -> ProviderError:
        async with serving(mute) as raw, new_client() as client:
            url = raw.url.replace("http://", "https://")
            with pytest.raises(ProviderError) as raised:
                await request_json(client, "GET", url, on_error=_as_error, timeout_s=0.2)
            return raised.value

    error = asyncio.run(run())

    assert error.error_class == "timeout"
    assert error.message.startswith("ConnectTimeout")


def test_a_header_that_cannot_be_sent_is_a_connection_error_without_the_secret() -> None:
    error = failure(answer_ok, headers={"x-key": f"{SECRET}\r\nx-injected: 1"}, secrets=[SECRET])

    assert error.error_class == "connection_error"
    assert SECRET[:8] not in error.message


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> SelfSigned:
    return self_signed(Path(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="module")
def tls_url(certificate: SelfSigned) -> Iterator[str]:
    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse({"tls": True})

    app = Starlette(routes=[Route("/", endpoint)])
    with FakeServer(app, certfile=certificate.certfile, keyfile=certificate.keyfile) as served:
        yield served.url


def _tls_call(url: str, **options: Any) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async with new_client(**options) as client:
            return await request_json(client, "GET", f"{url}/", on_error=_as_error)

    return asyncio.run(run())


def test_tls_trusts_the_given_context(tls_url: str, certificate: SelfSigned) -> None:
    assert _tls_call(tls_url, verify=certificate.client_context()) == {"tls": True}


def test_tls_refuses_a_certificate_the_default_context_does_not_trust(tls_url: str) -> None:
    with pytest.raises(ProviderError) as raised:
        _tls_call(tls_url)

    assert raised.value.error_class == "connection_error"
    assert raised.value.message.startswith("ConnectError")


def test_a_cookie_one_call_was_given_is_never_sent_on_the_next() -> None:
    async def sets_a_cookie(raw: Raw, reader: StreamReader, writer: StreamWriter) -> None:
        while True:
            await raw.read(reader)
            cookie = "Set-Cookie: session=tenant-a; Path=/"
            writer.write(head("200 OK", len(OK), "Content-Type: application/json", cookie) + OK)
            await writer.drain()

    raw, outcomes = call(sets_a_cookie, times=2)

    assert outcomes == [{"ok": True}, {"ok": True}]
    assert all(b"cookie:" not in request.lower() for request in raw.requests)
