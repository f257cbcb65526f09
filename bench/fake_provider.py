"""A fast fake OpenAI: ``POST /v1/chat/completions`` on loopback, in its own process.

``python -m bench.fake_provider --port P --key sk-bench`` serves a raw ASGI app under uvicorn
(uvloop + httptools), so the fake costs far less per call than what it measures.

- Auth: ``Authorization: Bearer <key>``, else OpenAI's 401 ``invalid_api_key`` error body.
- Answer: a ``chat.completion`` in OpenAI's real shape, with a ``usage`` block.
- Latency: the answer is held for ``latency_ms``, read from the text of the last message
  (``"latency_ms=50"`` anywhere in it: the one channel that survives the dispatcher's OpenAI
  adapter, which passes the prompt on), or from an ``x-latency-ms`` header, which wins.
- ``GET /stats``: ``{"requests", "in_flight", "peak_in_flight", "unauthorized", "bad"}``;
  ``peak_in_flight`` is the most calls held at once since the last ``POST /stats/reset``:
  with one worker process as the only client, the calls that process holds in flight.
"""

import argparse
import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MODEL = "gpt-4o-mini-2024-07-18"
USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 3,
    "total_tokens": 15,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
_LATENCY = re.compile(r"latency_ms=(\d+(?:\.\d+)?)")
_JSON = [(b"content-type", b"application/json")]


def latency_prompt(latency_ms: float) -> str:
    """The prompt text that asks the fake to take ``latency_ms``."""
    return f"Say ok. latency_ms={latency_ms:g}"


class Counters:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.unauthorized = 0
        self.bad = 0

    def enter(self) -> None:
        self.requests += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class FakeOpenAI:
    """The ASGI app. ``key`` is the only bearer key it accepts."""

    def __init__(self, key: str) -> None:
        self.auth = f"Bearer {key}".encode()
        self.counters = Counters()
        self.sequence = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        route = (scope["method"], scope["path"])
        if route == ("POST", "/v1/chat/completions"):
            await self.chat(scope, receive, send)
        elif route == ("GET", "/stats"):
            await respond(send, 200, orjson.dumps(self.counters.as_dict()))
        elif route == ("POST", "/stats/reset"):
            self.counters.reset()
            await respond(send, 200, b"{}")
        else:
            await respond(send, 404, error_body("Not found", "invalid_request_error", None))

    async def chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.counters.enter()
        try:
            headers = dict(scope["headers"])
            body = await read_body(receive)
            if headers.get(b"authorization") != self.auth:
                self.counters.unauthorized += 1
                message = "Incorrect API key provided. You can find your API key at platform."
                await respond(send, 401, error_body(message, "invalid_request_error", "bad_key"))
                return
            try:
                request = orjson.loads(body)
                latency_ms = _latency_ms(request, headers.get(b"x-latency-ms"))
            except (orjson.JSONDecodeError, TypeError, KeyError, IndexError, ValueError):
                self.counters.bad += 1
                await respond(send, 400, error_body("bad body", "invalid_request_error", None))
                return
            if latency_ms > 0:
                await asyncio.sleep(latency_ms / 1000)
            await respond(send, 200, self.completion(request))
        finally:
            self.counters.in_flight -= 1

    def completion(self, request: dict[str, Any]) -> bytes:
        self.sequence += 1
        return orjson.dumps(
            {
                "id": f"chatcmpl-bench{self.sequence:012d}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": MODEL if request["model"] == "gpt-4o-mini" else request["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok", "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": USAGE,
                "service_tier": "default",
                "system_fingerprint": "fp_bench",
            }
        )


def _latency_ms(request: dict[str, Any], header: bytes | None) -> float:
    if header is not None:
        return float(header)
    content = request["messages"][-1]["content"]
    found = _LATENCY.search(content if isinstance(content, str) else orjson.dumps(content).decode())
    return float(found.group(1)) if found else 0.0


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def respond(send: Send, status: int, body: bytes) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_body(message: str, kind: str, code: str | None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.fake_provider", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True, help="the bearer key it accepts")
    args = parser.parse_args()
    uvicorn.run(
        FakeOpenAI(args.key),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=8192,
        timeout_keep_alive=120,
    )


if __name__ == "__main__":
    main()
