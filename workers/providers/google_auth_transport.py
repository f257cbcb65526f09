"""Service-account access tokens: google-auth over httpx, cached per key for the whole process.

google-auth is synchronous and ships no HTTP transport without its ``[requests]`` extra, so
``HttpxRequest`` is one (``google.auth.transport.Request`` over an ``httpx.Client``). It calls
only hosts on the allow-list of token hosts: a key JSON's ``token_uri`` is tenant-supplied.

``ServiceAccountTokens.token(info)`` is what an adapter awaits. A cached token answers on the
event loop at once; otherwise the refresh (one blocking POST of a signed JWT to ``token_uri``)
runs on a small thread pool, behind a per-key lock, so concurrent calls of one key make one
token request and the loop never blocks. Only ``refresh()`` is called, never
``before_request()`` (which starts background calls of its own).

    not a key JSON / bad private key    -> ProviderError("auth_failed")
    token_uri host not allowed          -> ProviderError("auth_failed"), never contacted
    RefreshError (invalid_grant, ...)   -> ProviderError("auth_failed")
    RefreshError the server may retry   -> ProviderError("provider_error")
    TransportError (connect, timeout)   -> ProviderError("connection_error")
"""

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from google.auth import exceptions as google_exceptions
from google.auth import transport
from google.oauth2 import service_account

from dispatcher.hosts import url_allowed
from schemas.errors import ErrorClass
from workers.providers.errors import ProviderError

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
#: A token is replaced this long before it expires (at most half its lifetime).
REFRESH_MARGIN_S = 300.0
TOKEN_TIMEOUT_S = 30.0


class _Response(transport.Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


class HttpxRequest(transport.Request):
    """google-auth's transport over ``httpx.Client``, calling only allowed hosts."""

    def __init__(self, client: httpx.Client, allowed_hosts: list[str]) -> None:
        self.client = client
        self.allowed_hosts = allowed_hosts

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _Response:
        if not url_allowed(url, self.allowed_hosts):
            raise _transport_error(f"refused to call {_host(url)}: not allowed")
        try:
            response = self.client.request(
                method, url, content=body, headers=headers, timeout=timeout or TOKEN_TIMEOUT_S
            )
        except httpx.HTTPError as exc:
            raise _transport_error(f"{type(exc).__name__}: {exc}") from exc
        return _Response(response)


def _transport_error(text: str) -> Exception:
    """What google-auth expects a transport to raise."""
    return google_exceptions.TransportError(text)  # type: ignore[no-untyped-call]


def _host(url: str) -> str:
    return repr(urlsplit(url).hostname or "(none)")


@dataclass
class _Entry:
    credentials: Any  # service_account.Credentials: google-auth leaves refresh() untyped
    lock: threading.Lock = field(default_factory=threading.Lock)
    token: str | None = None
    fresh_until: float = 0.0

    def fresh(self, now: float) -> str | None:
        return self.token if now < self.fresh_until else None


class ServiceAccountTokens:
    """Access tokens per service-account key, shared by every thread and task of the process."""

    def __init__(
        self,
        token_hosts: list[str],
        *,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
        threads: int = 4,
    ) -> None:
        self.token_hosts = token_hosts
        self._client = client or httpx.Client(follow_redirects=False, trust_env=False)
        self._request = HttpxRequest(self._client, token_hosts)
        self._clock = clock
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="google-token")
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    async def token(self, info: dict[str, Any]) -> str:
        """A valid access token for the key JSON ``info``; refreshed off the event loop."""
        entry = self._entry(info)
        token = entry.fresh(self._clock())
        if token is not None:
            return token
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._refresh, entry)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()

    def _entry(self, info: dict[str, Any]) -> _Entry:
        key = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(self._credentials(info))
        return entry

    def _credentials(self, info: dict[str, Any]) -> Any:
        token_uri = str(info.get("token_uri") or "")
        if not url_allowed(token_uri, self.token_hosts):
            raise ProviderError(
                "auth_failed",
                f"the service account's token_uri host {_host(token_uri)} is not on the "
                "allow-list of token hosts",
            )
        try:
            return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=[CLOUD_PLATFORM]
            )
        except (ValueError, TypeError) as exc:  # its text never quotes the private key
            raise ProviderError(
                "auth_failed", f"the service-account JSON is not a usable key ({exc})"
            ) from None

    def _refresh(self, entry: _Entry) -> str:
        with entry.lock:
            token = entry.fresh(self._clock())
            if token is not None:
                return token
            with refresh_errors():
                entry.credentials.refresh(self._request)
            lifetime = _lifetime_s(entry.credentials.expiry)
            entry.token = str(entry.credentials.token)
            entry.fresh_until = self._clock() + lifetime - min(REFRESH_MARGIN_S, lifetime / 2)
            return entry.token


def _lifetime_s(expiry: datetime | None) -> float:
    """Seconds until google-auth's ``expiry`` (a naive UTC datetime); 0 when it has none."""
    if expiry is None:
        return 0.0
    return max(0.0, (expiry - datetime.now(UTC).replace(tzinfo=None)).total_seconds())


@contextmanager
def refresh_errors() -> Iterator[None]:
    """Translate google-auth's exceptions, once."""
    try:
        yield
    except google_exceptions.RefreshError as exc:
        retryable = bool(getattr(exc, "retryable", False))
        error_class: ErrorClass = "provider_error" if retryable else "auth_failed"
        raise ProviderError(error_class, f"token refresh failed: {exc.args[0]}") from None
    except google_exceptions.TransportError as exc:
        raise ProviderError("connection_error", f"token endpoint: {exc}") from None
