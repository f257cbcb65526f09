"""The API's rules for request bodies, in front of every route (``DirectApp`` runs every
request through them first): the API speaks JSON, and only so much of it.

- A body over ``max_bytes`` is refused with ``413`` (by its Content-Length, or while it streams).
- A body sent without a JSON Content-Type (``curl -d`` sends form-urlencoded) is read as JSON:
  the API has no form endpoints, and keys travel in a header browsers never send cross-site.
"""

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dispatcher.api.errors import error_response

_JSON = b"application/json"
_NOT_JSON = (b"", b"application/x-www-form-urlencoded", b"text/plain")


class JsonBody:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(413, "payload_too_large", _message(self.max_bytes))(
                scope, receive, send
            )
            return
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type in _NOT_JSON:
            headers[b"content-type"] = _JSON
            scope = dict(scope, headers=list(headers.items()))
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return message

        return counted


class BodyTooLarge(HTTPException):
    """Raised while the body streams in; FastAPI passes HTTP exceptions through body parsing."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, _message(max_bytes))


def _message(max_bytes: int) -> str:
    return f"the request body is over the limit of {max_bytes} bytes"
