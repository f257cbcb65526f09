"""The provider client: every adapter's calls, sent on one aiohttp session with nothing else
built around them.

A worker process holds ``max_in_flight`` (1,000+) calls at once, and a call costs the same
with 1 or 2,000 open: aiohttp's connector keeps idle connections in a queue per host and learns
that one closed from the event loop (httpcore's pool, httpx's default, scans every open
connection on every request). A call goes out as the adapter gives it (method, URL, headers,
body bytes) and comes back as an ``Answer`` (status, raw headers, body bytes): no request or
response object is built on the way, which cost more CPU than aiohttp's whole call
(``docs/performance.md``). An error answer becomes an ``httpx.Response`` for the adapter's
error mapping (``Answer.response``): those are rare, and the mappings read httpx's.

What it does:

- one ``aiohttp.ClientSession``, made on the first call (it belongs to that call's event loop)
  and closed by ``aclose``;
- no connection cap, idle connections kept ``keepalive_s``, TLS with the given context;
- no redirects, no retries (aiohttp resends a GET or PUT whose connection dropped: turned off,
  the queue owns every retry), no cookies (one client serves every tenant: a cookie one
  tenant's call was given must never ride on another's), no proxies or ``.netrc`` from the
  environment;
- headers as the adapter wrote them (names in their case), plus ``User-Agent`` and
  ``Accept-Encoding: gzip, deflate``; a gzip or deflate answer is decoded once;
- ``timeout_s`` bounds connecting (TCP and TLS) and each wait for the answer's bytes (aiohttp
  ends a wait of 5 s or more on the next whole second of the loop's clock).

aiohttp's exceptions become httpx's, so callers translate one family
(``http.transport_errors``)::

    aiohttp.ConnectionTimeoutError            -> httpx.ConnectTimeout
    other timeouts (no bytes within the bound)-> httpx.ReadTimeout
    aiohttp.ClientConnectorError              -> httpx.ConnectError  (refused, DNS, TLS)
    a body that does not decode               -> httpx.DecodingError
    ServerDisconnectedError, a malformed
    or cut-short answer                       -> httpx.RemoteProtocolError
    any other aiohttp.ClientError             -> httpx.NetworkError
    ValueError (a request aiohttp will not
    send: a control character in a header)    -> httpx.LocalProtocolError

The aiohttp exception is not chained: it keeps the request, headers and key included.
"""

import asyncio
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from types import TracebackType
from typing import Self

import aiohttp
import httpx
from aiohttp.http_exceptions import ContentEncodingError
from yarl import URL

#: First match wins: a ConnectionTimeoutError is also a TimeoutError, a ServerDisconnectedError
#: also a ClientError.
_ERRORS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (asyncio.TimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.ClientError, httpx.NetworkError),
    (ValueError, httpx.LocalProtocolError),
)
#: Sent on every call; aiohttp adds none of its own beyond ``Host`` and the body's framing.
_HEADERS = {"User-Agent": "byok-dispatcher/1", "Accept-Encoding": "gzip, deflate"}
_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent")


@dataclass(frozen=True, slots=True)
class Answer:
    """A provider's answer, read whole."""

    status: int
    raw_headers: tuple[tuple[bytes, bytes], ...]
    content: bytes

    @property
    def is_error(self) -> bool:
        return self.status >= 400

    def response(self) -> httpx.Response:
        """The answer as httpx's, for an adapter's error mapping."""
        return httpx.Response(self.status, headers=list(self.raw_headers), content=self.content)


class ProviderClient:
    """``ProviderClient(verify=context, keepalive_s=30)``; ``await client.call(...)``."""

    def __init__(self, *, verify: ssl.SSLContext, keepalive_s: float) -> None:
        self.verify = verify
        self.keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None

    async def call(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        timeout_s: float = 60.0,
    ) -> Answer:
        """Send one request and read its answer whole; httpx's exceptions (module docstring)."""
        session = self._session or self._open()
        with _httpx_errors():
            async with session.request(
                method,
                _url(url),
                headers=headers,
                data=content,
                allow_redirects=False,
                timeout=_timeout(timeout_s),
            ) as answer:
                body = await answer.read()
        return Answer(answer.status, answer.raw_headers, body)

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=0, keepalive_timeout=self.keepalive_s, ssl=self.verify
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers=_HEADERS,
            skip_auto_headers=_AUTO_HEADERS,
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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


@lru_cache(maxsize=1024)
def _url(url: str) -> URL:
    """The URL, percent-encoded where it must be as httpx does it, parsed once per URL (a
    pool calls a handful)."""
    return URL(str(httpx.URL(url)), encoded=True)


@lru_cache(maxsize=64)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(connect=seconds, sock_read=seconds)


@contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        if isinstance(exc.__cause__, ContentEncodingError):  # a body that does not decode
            raise httpx.DecodingError(exc.__cause__.message) from None
        mapped = next((to for source, to in _ERRORS if isinstance(exc, source)), None)
        if mapped is None:
            raise
        raise mapped(_text(exc)) from None


def _text(exc: Exception) -> str:
    """What went wrong; for a malformed answer without aiohttp's ``400, ... url=`` around it
    (no provider said 400)."""
    text = exc.message if isinstance(exc, aiohttp.ClientResponseError) else str(exc)
    return text or type(exc).__name__
