"""What every fake provider shares: the accepted key, a request log and a script of replies.

A fake is a ``FakeProvider`` subclass whose ``build_app()`` returns a FastAPI app answering with
``await fake.answer(request, deny=..., success=...)``:

1. the call is logged (``fake.requests``, ``fake.last``: method, path, query, headers, JSON);
2. ``deny(logged)`` checks the provider's real auth (and required headers or fields) and
   returns its real error answer, or None;
3. the next scripted ``Reply`` (``fake.script(reply, ...)``), if any, is sent: a status, a JSON
   body (a ``str`` body is sent as HTML, like a proxy's 502 page) and headers, after ``delay_s``
   (a hung answer: it returns early once the client is gone);
   a reply without a body only delays, then falls through to
4. ``success(json_body)``: the provider's real success body.

``fake.echo_key = True`` makes the 401 body quote the presented key whole (some providers do),
for secret-leak tests; ``fake.reset()`` empties the log and the script. In a test module::

    @pytest.fixture(scope="module")
    def served() -> Iterator[OpenAIFake]:
        with OpenAIFake(KEY).serve() as fake:
            yield fake

    @pytest.fixture
    def fake(served: OpenAIFake) -> OpenAIFake:
        return served.reset()

"""

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Self

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from tests.fakes.server import FakeServer


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    query: str
    url: str
    headers: dict[str, str]
    json: Any


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def hung(seconds: float = 5.0) -> Reply:
    """An answer that takes ``seconds`` (longer than the client's timeout)."""
    return Reply(delay_s=seconds)


def bad_gateway() -> Reply:
    """A load balancer's 502 page: not JSON, as providers' edges send it."""
    return Reply(
        status=502,
        body="<html><head><title>502 Bad Gateway</title></head>"
        "<body><center><h1>502 Bad Gateway</h1></center></body></html>",
    )


class FakeProvider:
    """Subclasses build their FastAPI app in ``build_app``; ``serve()`` puts it on loopback."""

    def __init__(self, key: str, *, echo_key: bool = False) -> None:
        self.key = key
        self.echo_key = echo_key
        self.url = ""
        self.requests: list[LoggedRequest] = []
        self._script: deque[Reply] = deque()
        self.app = self.build_app()

    def build_app(self) -> Any:
        raise NotImplementedError

    @contextmanager
    def serve(self) -> Iterator[Self]:
        """Serve the app on a loopback port; ``self.url`` is its base URL meanwhile."""
        with FakeServer(self.app) as server:
            self.url = server.url
            yield self

    @property
    def last(self) -> LoggedRequest:
        return self.requests[-1]

    def script(self, *replies: Reply) -> None:
        """Answer the next calls with these replies, in order, then succeed again."""
        self._script.extend(replies)

    def reset(self) -> Self:
        """Empty the log and the script, and stop echoing keys."""
        self.requests.clear()
        self._script.clear()
        self.echo_key = False
        return self

    async def answer(
        self,
        request: Request,
        *,
        deny: Callable[[LoggedRequest], Response | None],
        success: Callable[[Any], dict[str, Any]],
    ) -> Response:
        logged = await self._log(request)
        denied = deny(logged)
        if denied is not None:
            return denied
        scripted = await self._scripted(request)
        return scripted or JSONResponse(success(logged.json))

    async def _log(self, request: Request) -> LoggedRequest:
        raw = await request.body()
        logged = LoggedRequest(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            url=str(request.url),
            headers={name.lower(): value for name, value in request.headers.items()},
            json=await request.json() if raw else None,
        )
        self.requests.append(logged)
        return logged

    async def _scripted(self, request: Request) -> Response | None:
        if not self._script:
            return None
        reply = self._script.popleft()
        await _wait(request, reply.delay_s)
        if reply.body is None:
            return None
        if isinstance(reply.body, str):
            return HTMLResponse(reply.body, status_code=reply.status, headers=reply.headers)
        return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)


async def _wait(request: Request, seconds: float) -> None:
    """Sleep, but stop once the client has hung up (so a server can stop promptly)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not await request.is_disconnected():
        await asyncio.sleep(0.02)
