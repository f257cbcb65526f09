"""The load generator's HTTP/1.1 client: keep-alive connections over asyncio streams.

httpx's ``AsyncClient`` managed only a few hundred requests/s against the fake on this project's
2-core machine (see ``docs/performance.md``), below the rates the API must be driven at, so the
generator writes prebuilt requests and reads ``Content-Length`` answers itself. One connection
carries one request at a time (no pipelining), as a browser or an SDK would.
"""

import asyncio
from dataclasses import dataclass

import orjson


class HttpError(Exception):
    """The server answered something this client does not read (chunked, closed early)."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


def build_request(
    endpoint: Endpoint,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: object = None,
) -> bytes:
    """The bytes of one request; ``body`` (if any) is sent as JSON."""
    payload = b"" if body is None else orjson.dumps(body)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {endpoint.host}:{endpoint.port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, endpoint: Endpoint) -> "Connection":
        reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Send one request; its status and body."""
        self.writer.write(request)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            body = await self.reader.readexactly(_content_length(head))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise HttpError("connection closed before a whole answer") from exc
        return int(head[9:12]), body

    def close(self) -> None:
        self.writer.close()


def _content_length(head: bytes) -> int:
    lowered = head.lower()
    at = lowered.find(b"\r\ncontent-length:")
    if at < 0:
        raise HttpError("an answer with no Content-Length")
    end = lowered.find(b"\r\n", at + 2)
    return int(lowered[at + 17 : end])


class Pool:
    """Idle keep-alive connections to one endpoint; a new one opens when none is idle."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.idle: list[Connection] = []
        self.opened = 0

    async def send(self, request: bytes) -> tuple[int, bytes]:
        connection = self.idle.pop() if self.idle else await self._open()
        try:
            answer = await connection.send(request)
        except BaseException:
            connection.close()
            raise
        self.idle.append(connection)
        return answer

    async def _open(self) -> Connection:
        self.opened += 1
        return await Connection.open(self.endpoint)

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()
