"""``dispatcher batch FILE.jsonl``: run every line of a JSONL file, write one result per line.

Each input line is a ``POST /v1/run`` body. At most ``concurrency`` lines are in flight; each
is submitted with ``Prefer: wait`` and then read with ``Prefer: wait`` until it is over, so
nothing polls. Results go to the output file in input order, one JSON line per input line:

    {"line": 1, "id": "run_...", "status": "succeeded", "provider": ..., "output": ...,
     "usage": ..., "cost_usd": ..., "error": null}
    {"line": 2, "id": null, "status": "rejected", "error": {"code", "message", ...}}

Run it again with the same output file and it resumes: the lines already written are
skipped, and the lines that were in flight get their first run back rather than a second one,
because every line is sent with an ``Idempotency-Key`` made of the output file, the line's
number and its text (the API keeps keys for 24 hours). Transient failures (network, 429,
5xx) are retried with backoff; if they persist the command stops, and a later run resumes.
"""

import asyncio
import functools
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

TERMINAL = frozenset({"succeeded", "failed", "canceled", "expired"})
#: Answers worth asking again, after these pauses; then the batch stops (and can resume).
TRANSIENT = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


class BatchError(Exception):
    """The batch cannot go on: the message says why and how to resume."""


@dataclass(frozen=True)
class BatchOptions:
    input: Path
    output: Path
    base_url: str
    api_key: str
    concurrency: int = 32
    #: How long one request may wait for a run (``Prefer: wait``, at most 60 on the API).
    wait_s: float = 30.0


# --- results ------------------------------------------------------------------------------


def run_result(line: int, run: dict[str, Any]) -> dict[str, Any]:
    fields = ("id", "status", "provider", "credential_kind", "output", "usage", "cost_usd")
    return {"line": line, **{name: run.get(name) for name in fields}, "error": run.get("error")}


def rejected(line: int, error: dict[str, Any]) -> dict[str, Any]:
    return {"line": line, "id": None, "status": "rejected", "error": error}


@dataclass
class Summary:
    lines: int = 0
    succeeded: int = 0
    rejected: int = 0
    by_provider: Counter[str] = field(default_factory=Counter)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, result: dict[str, Any]) -> None:
        self.lines += 1
        self.succeeded += result["status"] == "succeeded"
        self.rejected += result["status"] == "rejected"
        if result.get("provider"):
            self.by_provider[result["provider"]] += 1
        usage = result.get("usage") or {}
        self.input_tokens += int(usage.get("input_tokens") or 0)
        self.output_tokens += int(usage.get("output_tokens") or 0)
        self.cost_usd += float(result.get("cost_usd") or 0.0)

    def render(self, output: Path) -> str:
        providers = ", ".join(f"{name} {count}" for name, count in self.by_provider.most_common())
        failed = self.lines - self.succeeded
        return "\n".join(
            [
                f"{self.lines} lines: {self.succeeded} succeeded, {failed} failed"
                f" ({self.rejected} rejected by the API)",
                f"by provider: {providers or 'none'}",
                f"tokens: {self.input_tokens:,} in, {self.output_tokens:,} out",
                f"cost: ${self.cost_usd:.6f}",
                f"results: {output}",
            ]
        )


# --- the output file ----------------------------------------------------------------------


def resume(output: Path, total: int) -> list[dict[str, Any]]:
    """The results already in ``output`` (a half-written last line is cut off)."""
    if not output.exists():
        return []
    raw = output.read_bytes()
    kept = raw[: raw.rfind(b"\n") + 1]
    if len(kept) < len(raw):
        with output.open("r+b") as file:
            file.truncate(len(kept))
    done = [json.loads(line) for line in kept.splitlines()]
    numbers = [result.get("line") for result in done]
    if numbers != list(range(1, len(done) + 1)) or len(done) > total:
        raise BatchError(f"{output} does not hold results of this input; name another --out")
    return done


class Writer:
    """Appends results in input order as they complete (out of order)."""

    def __init__(self, file: IO[str], next_index: int) -> None:
        self.file = file
        self.next = next_index
        self.waiting: dict[int, dict[str, Any]] = {}

    def put(self, index: int, result: dict[str, Any]) -> None:
        self.waiting[index] = result
        while self.next in self.waiting:
            self.file.write(json.dumps(self.waiting.pop(self.next)) + "\n")
            self.next += 1
        self.file.flush()


# --- progress -----------------------------------------------------------------------------


class Progress:
    """A bar on stderr with the rate and the time left: redrawn in place on a terminal, a line
    every few seconds otherwise."""

    WIDTH = 30

    def __init__(self, total: int, done: int, stream: IO[str] = sys.stderr) -> None:
        self.total, self.done, self.first = total, done, done
        self.stream = stream
        self.tty = stream.isatty()
        self.started = self.drawn = time.monotonic()

    def advance(self) -> None:
        self.done += 1
        if time.monotonic() - self.drawn >= (0.1 if self.tty else 2.0):
            self.draw()

    def draw(self, last: bool = False) -> None:
        self.drawn = time.monotonic()
        elapsed = max(self.drawn - self.started, 1e-6)
        rate = (self.done - self.first) / elapsed
        left = (self.total - self.done) / rate if rate > 0 else None
        filled = self.WIDTH * self.done // max(self.total, 1)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        percent = 100 * self.done / max(self.total, 1)
        text = f"[{bar}] {self.done}/{self.total} {percent:3.0f}% {rate:.1f}/s ETA {_clock(left)}"
        end = "\n" if last or not self.tty else ""
        self.stream.write(("\r" if self.tty else "") + text + end)
        self.stream.flush()


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


# --- the run ------------------------------------------------------------------------------


def idempotency_key(output: Path, line: int, text: str) -> str:
    seed = f"{output.resolve()}\n{line}\n{text}".encode()
    return "batch-" + hashlib.sha256(seed).hexdigest()[:48]


class Batch:
    def __init__(self, options: BatchOptions, client: httpx.AsyncClient) -> None:
        self.options = options
        self.client = client
        self.prefer = {"prefer": f"wait={options.wait_s:g}"}

    async def line(self, number: int, text: str) -> dict[str, Any]:
        """Submit line ``number`` (1-based), wait until its run is over, and say how it went."""
        try:
            body = json.loads(text)
        except ValueError:
            return rejected(number, {"code": "malformed_json", "message": "not a JSON line"})
        key = {"idempotency-key": idempotency_key(self.options.output, number, text)}
        post = functools.partial(self.client.post, "/v1/run", json=body, headers=self.prefer | key)
        answer = await self._send(post)
        if answer.status_code >= 400:
            return rejected(number, _error(answer))
        run = answer.json()
        while run["status"] not in TERMINAL:
            get = functools.partial(self.client.get, f"/v1/runs/{run['id']}", headers=self.prefer)
            run = (await self._send(get)).json()
        return run_result(number, run)

    async def _send(self, request: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
        problem = ""
        for pause in (*BACKOFF_S, None):
            try:
                answer = await request()
                if answer.status_code not in TRANSIENT:
                    return answer
                problem = f"the API answered {answer.status_code}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__} talking to {self.options.base_url}"
            if pause is not None:
                await asyncio.sleep(pause)
        raise BatchError(f"{problem}; run the same command again to resume")


def _error(answer: httpx.Response) -> dict[str, Any]:
    try:
        error: dict[str, Any] = answer.json()["error"]
    except (ValueError, KeyError, TypeError):
        return {"code": "http_error", "message": f"the API answered {answer.status_code}"}
    return error


async def run_batch(options: BatchOptions, stream: IO[str] = sys.stderr) -> Summary:
    """Run the lines of ``options.input`` not yet in ``options.output``; the summary covers
    the whole output."""
    lines = options.input.read_text().splitlines()
    summary = Summary()
    for result in resume(options.output, len(lines)):
        summary.add(result)
    progress = Progress(len(lines), summary.lines, stream)
    todo: asyncio.Queue[int] = asyncio.Queue()
    for index in range(summary.lines, len(lines)):
        todo.put_nowait(index)
    headers = {"authorization": f"Bearer {options.api_key}"}
    limits = httpx.Limits(max_connections=options.concurrency)
    timeout = httpx.Timeout(options.wait_s + 30)
    with options.output.open("a") as file:
        writer = Writer(file, summary.lines)
        async with httpx.AsyncClient(
            base_url=options.base_url, headers=headers, limits=limits, timeout=timeout
        ) as client:
            batch = Batch(options, client)

            async def work() -> None:
                while not todo.empty():
                    index = todo.get_nowait()
                    result = await batch.line(index + 1, lines[index])
                    writer.put(index, result)
                    summary.add(result)
                    progress.advance()

            try:
                async with asyncio.TaskGroup() as group:
                    for _ in range(options.concurrency):
                        group.create_task(work())
            except* BatchError as stopped:
                raise stopped.exceptions[0] from None
            finally:
                progress.draw(last=True)
    return summary
