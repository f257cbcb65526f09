"""Watching runs: ``GET /v1/runs/{id}/events`` (server-sent events, closing at the terminal
one) and ``Prefer: wait=N``, both woken by the process's ``RunWatch`` (started and stopped
with the app), never by polling the store.

The stream opens with ``queued`` (from the run's row), replays the run's Redis stream, then
waits on the run's pub/sub channel and reads the stream again each time it hears something.
``Last-Event-ID`` resumes after an event already seen. A run already over replays and closes;
if its stream has expired, its terminal event is rebuilt from its row.
"""

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

import redis
import redis.asyncio as aioredis
import structlog
from fastapi import APIRouter, FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from sqlmodel import Session

from dispatcher.api.deps import ServicesDep, TenantDep
from dispatcher.api.errors import ApiError
from dispatcher.db import utcnow
from dispatcher.events import RunWatch, Signal
from dispatcher.models import Run
from dispatcher.services import Services
from dispatcher.store import runs as store
from schemas.runs import TERMINAL_STATUSES, RunPublic
from schemas.webhooks import TERMINAL_EVENTS

log = structlog.get_logger(__name__)

#: A comment line this often keeps proxies from closing a quiet stream.
KEEPALIVE_S = 15.0
#: A run found over in the store may still be publishing its terminal event: wait this long.
SETTLE_S = 2.0
_STREAM_ID = r"^[0-9]+-[0-9]+$"
#: The longest ``Prefer: wait=N`` honoured; a longer one waits this long.
MAX_WAIT_S = 60.0
_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?([0-9]+(?:\.[0-9]+)?)\"?", re.IGNORECASE)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    services: Services = app.state.services
    client = aioredis.Redis.from_url(services.settings.locate_redis())
    watch = RunWatch(client, services.settings.redis_namespace)
    await watch.start()
    app.state.run_watch = watch
    try:
        yield
    finally:
        await watch.close()


#: Included by ``dispatcher.api.runs`` (under its ``/v1``), which brings its lifespan along.
router = APIRouter(tags=["runs"], lifespan=_lifespan)


def watch_of(request: Request) -> RunWatch:
    watch: RunWatch = request.app.state.run_watch
    return watch


def wait_preference(prefer: str | None) -> float | None:
    """N of ``Prefer: wait=N`` (at most ``MAX_WAIT_S``), or None."""
    found = _WAIT.search(prefer or "")
    if found is None or float(found.group(1)) <= 0:
        return None
    return min(float(found.group(1)), MAX_WAIT_S)


async def wait_for_run(
    watch: RunWatch,
    run_id: str,
    tenant_id: str,
    load: Callable[[], RunPublic | None],
    wait_s: float,
    start: Callable[[], Awaitable[None]] | None = None,
) -> RunPublic | None:
    """The run once it is over, or ``load()`` after ``wait_s``. Woken by its terminal event
    (or a lost connection): the run that event carries for ``tenant_id``, else ``load()``.
    ``start``, when given, creates the run: it is awaited once the run is watched, so the run
    is read only when its terminal event came without it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    async with AsyncExitStack() as stack:
        try:  # the only step that talks to Redis: the rest waits on the watch's signal
            signal = await stack.enter_async_context(watch.watch(run_id, tenant_id))
        except redis.RedisError:
            if start is not None:
                await start()
            return await run_in_threadpool(load)
        if start is not None:
            await start()
            await _heard(signal.settled, wait_s)
        while True:
            signal.settled.clear()
            run = _carried(signal) or await run_in_threadpool(load)
            remaining = deadline - loop.time()
            if run is None or run.status in TERMINAL_STATUSES or remaining <= 0:
                return run
            await _heard(signal.settled, remaining)


def _carried(signal: Signal) -> RunPublic | None:
    """The finished run the signal's terminal event carried, if it did (and is readable)."""
    body, signal.run = signal.run, None
    if body is None:
        return None
    try:
        return RunPublic.model_validate(body)
    except ValidationError:
        log.warning("a terminal event carried an unreadable run; reading the store")
        return None


def load_run(services: Services, tenant_id: str, run_id: str) -> Run | None:
    with Session(services.engine) as session:
        return store.get_run(session, tenant_id, run_id)


@router.get(
    "/runs/{run_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 404: {"description": "no such run"}},
)
async def run_events(
    run_id: str,
    tenant_id: TenantDep,
    services: ServicesDep,
    request: Request,
    last_event_id: Annotated[str | None, Header(pattern=_STREAM_ID)] = None,
) -> StreamingResponse:
    """Server-sent events: ``queued``, ``running``, ``attempt_failed``, ``fell_back``,
    ``waiting``, then one of ``succeeded``, ``failed``, ``canceled``, after which it closes."""
    run = await run_in_threadpool(load_run, services, tenant_id, run_id)
    if run is None:
        raise ApiError(404, "not_found", f"no run {run_id!r}")
    stream = _events(watch_of(request), services, tenant_id, run, last_event_id)
    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


async def _events(
    watch: RunWatch, services: Services, tenant_id: str, run: Run, after: str | None
) -> AsyncIterator[str]:
    if after is None:
        yield _sse("queued", {"run_id": run.id, "at": run.created_at.timestamp()}, "0-0")
        after = "0-0"
    try:
        async with watch.watch(run.id) as signal:
            while True:
                signal.changed.clear()
                for entry_id, event in await watch.events_after(run.id, after):
                    after, kind = entry_id, event.pop("type")
                    yield _sse(kind, event, entry_id)
                    if kind in TERMINAL_EVENTS:
                        return
                if run.status in TERMINAL_STATUSES and _settled(run):
                    yield _sse(*_rebuilt_terminal(run))
                    return
                if not await _heard(signal.changed, _patience(run)):
                    run = await _reload(services, tenant_id, run)
                    yield ": keepalive\n\n"
    except redis.RedisError:
        yield _sse("error", {"code": "events_unavailable", "message": "Redis is not answering"})


async def _reload(services: Services, tenant_id: str, run: Run) -> Run:
    found = await run_in_threadpool(load_run, services, tenant_id, run.id)
    return found or run


def _sse(kind: str, data: dict[str, Any], entry_id: str | None = None) -> str:
    """One server-sent event; its data is the event as published, without the tenant id."""
    data = {"type": kind} | {k: v for k, v in data.items() if k != "tenant_id"}
    head = f"id: {entry_id}\n" if entry_id else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n"


async def _heard(event: asyncio.Event, timeout_s: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        return False
    return True


def _settled(run: Run) -> bool:
    """Over long enough that its terminal event, if it was ever published, is in the stream."""
    return _since_finished(run) >= SETTLE_S


def _patience(run: Run) -> float:
    if run.status in TERMINAL_STATUSES:
        return max(0.0, SETTLE_S - _since_finished(run))
    return KEEPALIVE_S


def _since_finished(run: Run) -> float:
    finished: datetime = run.finished_at or run.created_at
    return (utcnow() - finished).total_seconds()


def _rebuilt_terminal(run: Run) -> tuple[str, dict[str, Any]]:
    """The terminal event from the run's row, when its stream no longer has it."""
    data: dict[str, Any] = {"run_id": run.id, "at": (run.finished_at or run.created_at).timestamp()}
    if run.status == "succeeded":
        return "succeeded", data | {
            "provider": run.provider,
            "credential_kind": run.credential_kind,
        }
    error = run.error or {}
    kind = "canceled" if run.status == "canceled" else "failed"
    return kind, data | {"code": error.get("code", run.status), "message": error.get("message")}
