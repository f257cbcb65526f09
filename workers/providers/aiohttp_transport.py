"""An httpx transport over aiohttp's connector, so a call costs the same with 1 or 2,000 open.

httpcore's pool, httpx's default, scans every open connection on every request (and polls each
idle socket), so in a process holding a thousand provider calls each new call pays for all the
others. aiohttp's connector keeps idle connections in a queue per host and learns that one
closed from the event loop: taking and returning a connection costs the same however many are
open. The adapters keep calling through ``httpx.AsyncClient``; only what sends the bytes changes.

What it does, and what it leaves to httpx:

- one ``aiohttp.ClientSession`` per transport, made on the first call (it belongs to that call's
  event loop) and closed by ``aclose``;
- no connection cap, idle connections kept ``keepalive_s``, TLS with the given context;
- no redirects, no retries (aiohttp resends a GET or PUT whose connection dropped: turned off,
  the queue owns every retry), no cookies, no proxies or ``.netrc`` from the environment, no
  decompression: httpx follows its own settings for each of these, once;
- the request's headers go out as httpx built them (names in their case, no headers of
  aiohttp's own); the body as bytes, or streamed when httpx holds a stream;
- timeouts from httpx's per-request ``timeout``: ``connect`` bounds connecting (TCP and TLS),
  ``read`` each wait for the answer's bytes (aiohttp ends a wait of 5 s or more on the next
  whole second of the loop's clock). With no cap there is no wait for the pool, and writes go
  to the event loop's buffer, so ``pool`` and ``write`` have nothing to bound.

aiohttp's exceptions become httpx's, so callers translate one family::

    aiohttp.ConnectionTimeoutError            -> httpx.ConnectTimeout
    other timeouts (no bytes within ``read``) -> httpx.ReadTimeout
    aiohttp.ClientConnectorError              -> httpx.ConnectError  (refused, DNS, TLS)
    ServerDisconnectedError, a malformed
    or cut-short answer                       -> httpx.RemoteProtocolError
    any other aiohttp.ClientError             -> httpx.NetworkError
    ValueError (a request aiohttp will not
    send: a control character in a header)    -> httpx.LocalProtocolError

The aiohttp exception is not chained: it keeps the request, headers and key included.
"""

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx
from yarl import URL

#: First match wins: a ConnectionTimeoutError is also a TimeoutError, a ServerDisconnectedError
#: also a ClientError.
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (asyncio.TimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.ClientError, httpx.NetworkError),
    (ValueError, httpx.LocalProtocolError),
)
#: Headers aiohttp adds when a request lacks them; httpx decides these itself.
_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent")
#: aiohttp chooses chunked or sized framing from the body it is given.
_FRAMING = b"transfer-encoding"


class AiohttpTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncClient(transport=AiohttpTransport(verify=context, keepalive_s=30))``."""

    def __init__(self, *, verify: ssl.SSLContext, keepalive_s: float) -> None:
        self.verify = verify
        self.keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        with _httpx_errors(request):
            answer = await session.request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=_headers(request.headers),
                data=_body(request),
                allow_redirects=False,
                timeout=_timeout(**request.extensions.get("timeout", {})),
            )
        version = f"HTTP/{answer.version.major}.{answer.version.minor}" if answer.version else ""
        return httpx.Response(
            answer.status,
            headers=answer.raw_headers,
            stream=_Body(answer, request),
            extensions={
                "http_version": version.encode(),
                "reason_phrase": (answer.reason or "").encode("latin-1", errors="replace"),
            },
        )

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=0, keepalive_timeout=self.keepalive_s, ssl=self.verify
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_AUTO_HEADERS,
            auto_decompress=False,
            trust_env=False,
            timeout=aiohttp.ClientTimeout(),
        )
        # aiohttp resends an idempotent request once when its connection drops (no public
        # switch); the queue owns retries, so a call is sent once.
        self._session._retry_connection = False
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


class _Body(httpx.AsyncByteStream):
    """The answer's body as it arrives; closing it hands the connection back (or drops it,
    when the body was not read to its end)."""

    def __init__(self, answer: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._answer = answer
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors(self._request):
            async for chunk in self._answer.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        self._answer.release()


def _headers(headers: httpx.Headers) -> list[tuple[str, str]]:
    encoding = headers.encoding
    return [
        (name.decode(encoding), value.decode(encoding))
        for name, value in headers.raw
        if name.lower() != _FRAMING
    ]


def _body(request: httpx.Request) -> Any:
    try:
        return request.content or None
    except httpx.RequestNotRead:
        return request.stream


def _timeout(
    connect: float | None = None,
    read: float | None = None,
    write: float | None = None,
    pool: float | None = None,
) -> aiohttp.ClientTimeout:
    """aiohttp's timeouts for httpx's (``write`` and ``pool``: see the module's docstring)."""
    return aiohttp.ClientTimeout(connect=connect, sock_read=read)


@contextmanager
def _httpx_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        mapped = next((to for source, to in _ERRORS if isinstance(exc, source)), None)
        if mapped is None:
            raise
        raise mapped(_text(exc), request=request) from None


def _text(exc: Exception) -> str:
    """What went wrong; for a malformed answer without aiohttp's ``400, ... url=`` around it
    (no provider said 400)."""
    text = exc.message if isinstance(exc, aiohttp.ClientResponseError) else str(exc)
    return text or type(exc).__name__
