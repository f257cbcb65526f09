"""The load generator: ``python -m bench.load`` reads a ``Spec`` as JSON on stdin and writes
its ``result`` as JSON on stdout. It runs in its own process, on uvloop, over ``rawhttp``.

- closed loop: ``connections`` clients, each sending its next request when the last one is
  answered, for ``duration_s`` (or until ``count`` requests are sent);
- open loop: one request every ``1/rate`` s whatever the answers do (a connection per request
  in flight), latency timed from the request's scheduled time, so a stall is not hidden.

Requests that start in the first ``warmup_s`` are sent but not counted. With ``keep_samples``
every counted request is returned as ``[wall-clock send time, latency ms, status, run id]``.
"""

import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.rawhttp import Connection, Endpoint, HttpError, Pool, build_request
from bench.stats import summary

TERMINAL = {"succeeded", "failed", "canceled", "expired"}


@dataclass
class Spec:
    port: int
    path: str
    body: Any = None
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    mode: str = "closed"
    connections: int = 32
    rate: float = 0.0
    duration_s: float = 5.0
    warmup_s: float = 1.0
    count: int | None = None
    keep_samples: bool = False


@dataclass
class Sample:
    start: float  # monotonic, when the request was due
    end: float
    status: int
    run_id: str | None = None


class Recorder:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.endpoint = Endpoint(spec.host, spec.port)
        self.request = build_request(self.endpoint, spec.method, spec.path, spec.headers, spec.body)
        self.samples: list[Sample] = []
        self.failures: dict[str, int] = {}
        self.sent = 0
        self.connections = spec.connections if spec.mode == "closed" else 0
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.cpu0 = time.process_time()

    def more(self, now: float) -> bool:
        if self.spec.count is not None:
            return self.sent < self.spec.count
        return now < self.t0 + self.spec.duration_s

    async def one(self, connection: Connection | Pool, due: float) -> bool:
        """Send one request; False when the connection failed."""
        self.sent += 1
        try:
            status, body = await connection.send(self.request)
            sample = Sample(due, time.monotonic(), status)
            if self.spec.keep_samples and status < 300:
                sample.run_id = orjson.loads(body).get("id")
            self.samples.append(sample)
        except (HttpError, OSError) as exc:
            name = type(exc).__name__
            self.failures[name] = self.failures.get(name, 0) + 1
            return False
        return True


async def closed_loop(recorder: Recorder) -> None:
    async def client() -> None:
        connection = await Connection.open(recorder.endpoint)
        while recorder.more(time.monotonic()):
            if not await recorder.one(connection, time.monotonic()):
                connection.close()
                connection = await Connection.open(recorder.endpoint)
        connection.close()

    await asyncio.gather(*(client() for _ in range(recorder.spec.connections)))


async def open_loop(recorder: Recorder) -> None:
    pool = Pool(recorder.endpoint)
    tasks: set[asyncio.Task[bool]] = set()
    interval = 1 / recorder.spec.rate
    due = recorder.t0
    while recorder.more(due):
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        task = asyncio.create_task(recorder.one(pool, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        due += interval
    await asyncio.gather(*tasks)
    recorder.connections = pool.opened
    pool.close()


def result(recorder: Recorder, finished: float) -> dict[str, Any]:
    """Latency of requests sent after the warm-up; throughput as answers per second received
    between the warm-up's end and the end of the run (or the last answer, with ``count``)."""
    spec = recorder.spec
    start = recorder.t0 + spec.warmup_s
    end = finished if spec.count is not None else recorder.t0 + spec.duration_s
    counted = [s for s in recorder.samples if s.start >= start]
    ok = [s for s in counted if s.status < 300]
    answered = sum(1 for s in recorder.samples if s.status < 300 and start <= s.end <= end)
    statuses: dict[str, int] = {}
    for sample in counted:
        statuses[str(sample.status)] = statuses.get(str(sample.status), 0) + 1
    elapsed = finished - recorder.t0
    out: dict[str, Any] = {
        "sent": recorder.sent,
        "answered_2xx": sum(1 for s in recorder.samples if s.status < 300),
        "counted": len(counted),
        "statuses": statuses,
        "failures": recorder.failures,
        "window_s": round(end - start, 3),
        "rps": round(answered / max(1e-9, end - start), 1),
        "latency_ms": summary([(s.end - s.start) * 1000 for s in ok]),
        "connections": recorder.connections,
        "generator_cpu_share": round((time.process_time() - recorder.cpu0) / elapsed, 3),
        "elapsed_s": round(elapsed, 3),
    }
    if spec.keep_samples:
        wall = recorder.wall0 - recorder.t0
        out["samples"] = [
            [round(s.start + wall, 6), round((s.end - s.start) * 1000, 3), s.status, s.run_id]
            for s in counted
        ]
    return out


async def drive(spec: Spec) -> dict[str, Any]:
    recorder = Recorder(spec)
    if spec.mode == "closed":
        await closed_loop(recorder)
    elif spec.mode == "open":
        await open_loop(recorder)
    else:
        raise ValueError(f"unknown mode {spec.mode!r}")
    return result(recorder, time.monotonic())


def main() -> None:
    import uvloop

    spec = Spec(**orjson.loads(sys.stdin.buffer.read()))
    figures = uvloop.run(drive(spec))
    sys.stdout.buffer.write(orjson.dumps(figures))


if __name__ == "__main__":
    main()
