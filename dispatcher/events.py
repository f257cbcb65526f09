"""Run events: one Redis stream for every run's events, one per run, a pub/sub channel, and
the webhook outbox.

    {ns}:events             every event of every run (capped), for other systems to consume
    {ns}:events:<run id>    one run's events, kept a day: live readers replay, then block
    {ns}:run:<run id>       pub/sub channel carrying the same payload, for waiters
    {ns}:hook:<run id>      the run's webhook (url, events), set at submission when it has one
    {ns}:webhooks:outbox    the events some run's webhook subscribed to, for the webhook pool

Types: queued, running, attempt_failed, fell_back, waiting, succeeded, failed, canceled.
A payload carries ids, statuses and error classes, never inputs, outputs or secrets. The one
exception is for waiting clients, and on pub/sub only (nothing keeps it): the terminal event
of a run a submit waits on, whose worker knows the whole run (its one attempt was this one),
carries it as ``run``, the body ``GET /v1/runs/{id}`` would answer, so the waiter is answered
without reading the store.
The streams and webhooks get the event without it; a body above ``MAX_CHANNEL_RUN_BYTES`` is
left out, and its waiters read the store.

``publish`` is one Lua script: it writes both streams, publishes, and copies the event to the
outbox when the run's webhook subscribed to it, so the executor never looks a subscription up.
``publish_many`` sends any number of events, in order, in one round trip, with other commands
(a worker announces what each batch of its store writes changed that way, and counts it).

``queued`` is not published by the submit path (it stays one INSERT and one enqueue): readers
of a run's events start from its row, and a webhook that subscribed to ``queued`` gets it
through the outbox when the run is submitted.

``RunWatch`` is the API side: it wakes waiters (``Prefer: wait``, server-sent events) through
one pattern subscription per process.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis
import redis.asyncio as aioredis
import structlog
from redis.client import Pipeline
from redis.exceptions import NoScriptError

from dispatcher.jsontext import dumps_bytes, loads
from schemas.webhooks import TERMINAL_EVENTS, RunEventType

log = structlog.get_logger(__name__)

EventType = RunEventType

STREAM_MAXLEN = 100_000
RUN_STREAM_TTL_S = 86_400
#: A webhook subscription outlives any run still moving; the terminal event removes it.
HOOK_TTL_S = 3 * 86_400

#: The largest terminal event (with its run) published for waiters; above it, they read the
#: store.
MAX_CHANNEL_RUN_BYTES = 64 * 1024

# KEYS: shared stream, run stream, hook, outbox.
# ARGV: payload, type, maxlen, run stream ttl, channel, terminal (1/0), the channel's payload
# ('': the payload).
_PUBLISH = """
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'event', ARGV[1])
redis.call('XADD', KEYS[2], '*', 'event', ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[4])
if ARGV[7] ~= '' then
  redis.call('PUBLISH', ARGV[5], ARGV[7])
else
  redis.call('PUBLISH', ARGV[5], ARGV[1])
end
local hook = redis.call('HMGET', KEYS[3], 'url', 'events')
if hook[1] and string.find(',' .. hook[2] .. ',', ',' .. ARGV[2] .. ',', 1, true) then
  redis.call('XADD', KEYS[4], '*', 'event', ARGV[1], 'url', hook[1])
end
if ARGV[6] == '1' then
  redis.call('DEL', KEYS[3])
end
return 1
"""


def channel_name(namespace: str, run_id: str) -> str:
    return f"{namespace}:run:{run_id}"


def run_stream_name(namespace: str, run_id: str) -> str:
    return f"{namespace}:events:{run_id}"


def outbox_name(namespace: str) -> str:
    return f"{namespace}:webhooks:outbox"


def payload(run_id: str, tenant_id: str, type: str, data: dict[str, Any]) -> bytes:
    """An event as the streams, the channel and the outbox carry it (JSON)."""
    event = {"run_id": run_id, "tenant_id": tenant_id, "type": type, "at": time.time(), **data}
    return dumps_bytes(event)


class RunEvent(NamedTuple):
    run_id: str
    tenant_id: str
    type: EventType
    data: dict[str, Any]
    #: The finished run (``RunPublic``'s JSON), for waiters only (the module's docstring):
    #: set on a terminal event whose run is known whole.
    run: bytes | None = None


@dataclass(frozen=True)
class Hook:
    """A run's webhook subscription."""

    run_id: str
    tenant_id: str
    url: str
    events: Sequence[str]


class RunEvents:
    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self._publish = client.register_script(_PUBLISH)

    def stream(self) -> str:
        return f"{self.namespace}:events"

    def run_stream(self, run_id: str) -> str:
        return run_stream_name(self.namespace, run_id)

    def channel(self, run_id: str) -> str:
        return channel_name(self.namespace, run_id)

    def hook(self, run_id: str) -> str:
        return f"{self.namespace}:hook:{run_id}"

    def outbox(self) -> str:
        return outbox_name(self.namespace)

    def publish(self, run_id: str, tenant_id: str, type: EventType, **data: Any) -> None:
        self.publish_many([RunEvent(run_id, tenant_id, type, data)])

    def publish_many(
        self, events: Sequence[RunEvent], also: Callable[[Pipeline], None] | None = None
    ) -> None:
        """Publish ``events`` in order, in one round trip, with the commands ``also`` adds to
        the same pipeline (a worker's metrics). The script goes by ``EVALSHA`` itself (a
        redis-py ``Script`` in a pipeline would add a ``SCRIPT EXISTS`` round trip); a server
        that lost its scripts gets it loaded and the events sent again, and only them."""
        pipe = self._events_pipeline(events)
        if also is not None:
            also(pipe)
        answers = pipe.execute(raise_on_error=False)
        if any(isinstance(answer, NoScriptError) for answer in answers[: len(events)]):
            self.client.script_load(_PUBLISH)
            self._events_pipeline(events).execute()
            answers = answers[len(events) :]
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer

    def _events_pipeline(self, events: Sequence[RunEvent]) -> Pipeline:
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            pipe.evalsha(self._publish.sha, 4, *self._publish_args(event))
        return pipe

    def _publish_args(self, event: RunEvent) -> list[str | bytes | int]:
        run_id, tenant_id, type, data, run = event
        keys = [self.stream(), self.run_stream(run_id), self.hook(run_id), self.outbox()]
        text = payload(run_id, tenant_id, type, data)
        args: list[str | bytes | int] = [text, type, STREAM_MAXLEN, RUN_STREAM_TTL_S]
        args += [self.channel(run_id), int(type in TERMINAL_EVENTS), _for_waiters(text, run)]
        return [*keys, *args]

    def subscribe_webhooks(self, hooks: Sequence[Hook]) -> None:
        """Record runs' webhooks, before their first message is enqueued (one round trip);
        a subscription to ``queued`` is served at once."""
        pipe = self.client.pipeline(transaction=False)
        for hook in hooks:
            key = self.hook(hook.run_id)
            pipe.hset(key, mapping={"url": hook.url, "events": ",".join(hook.events)})
            pipe.expire(key, HOOK_TTL_S)
            if "queued" in hook.events:
                event = payload(hook.run_id, hook.tenant_id, "queued", {})
                pipe.xadd(self.outbox(), {"event": event, "url": hook.url})
        pipe.execute()


def _for_waiters(stream_payload: bytes, run: bytes | None) -> bytes:
    """The channel's payload when it differs from the streams' (the event, a JSON object,
    with its run's JSON spliced in as ``run``), or empty."""
    if run is None or len(stream_payload) + len(run) > MAX_CHANNEL_RUN_BYTES:
        return b""
    return b"".join((stream_payload[:-1], b',"run":', run, b"}"))


class Signal:
    """What one watcher of a run hears: ``changed`` on each of its events, ``settled`` on its
    terminal one, and ``run``, the finished run, when that event carried it for this
    watcher's tenant. A lost connection sets both (events may have been missed): the watcher
    then reads the store or the run's stream again."""

    def __init__(self, tenant_id: str | None = None) -> None:
        self.tenant_id = tenant_id
        self.changed = asyncio.Event()
        self.settled = asyncio.Event()
        self.run: dict[str, Any] | None = None

    def notify(self, *, settled: bool) -> None:
        self.changed.set()
        if settled:
            self.settled.set()

    def hear(self, event: dict[str, Any]) -> None:
        settled = event.get("type") in TERMINAL_EVENTS
        if settled and self.tenant_id is not None and event.get("tenant_id") == self.tenant_id:
            self.run = event.get("run")
        self.notify(settled=settled)


class RunWatch:
    """Wakes waiters through ONE pattern subscription per API process, made when it starts:
    ``PSUBSCRIBE`` on every run's channel, each event handed to the watchers of its run (an
    event of a run nobody here watches is dropped after one dictionary lookup). Entering
    ``watch`` sends no Redis command: the subscription is already live, so every event
    published from then on is heard; earlier ones are in the store (events follow the commit)
    and in the run's stream.

    One subscription and command per waiter, on one connection, queued under load: at 200
    waiters a second they cost the API most of its event loop. A lost connection wakes every
    watcher as settled (they read the store again), and so does the subscription's renewal
    once redis-py has reconnected: events may have been missed in between."""

    LIVE_TIMEOUT_S = 5.0
    RETRY_S = 1.0
    CLOSE_TIMEOUT_S = 2.0

    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self._pubsub = client.pubsub()
        self._pattern = channel_name(namespace, "*")
        self._watchers: dict[bytes, set[Signal]] = {}
        self._live = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        """Start listening; the subscription is made (and remade) by the listener."""
        self._reader = asyncio.create_task(self._read(), name="run-watch")

    async def close(self) -> None:
        """Stop listening and close the connections, each within ``CLOSE_TIMEOUT_S``: a reader
        cancelled inside redis-py can come back as a connection error instead of ending, and
        closing a pub/sub connection can deadlock (redis/redis-py#3941); a process that is
        stopping must not hang on either."""
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait({self._reader}, timeout=self.CLOSE_TIMEOUT_S)
        for closing in (self._pubsub.aclose(), self.client.aclose()):  # type: ignore[no-untyped-call]
            try:
                await asyncio.wait_for(closing, self.CLOSE_TIMEOUT_S)
            except (TimeoutError, redis.RedisError, OSError) as exc:
                log.warning("a pub/sub connection did not close", error=type(exc).__name__)

    @contextlib.asynccontextmanager
    async def watch(self, run_id: str, tenant_id: str | None = None) -> AsyncIterator[Signal]:
        """Hear ``run_id``'s events while inside (and, given the run's ``tenant_id``, the run
        its terminal event carries); ``redis.RedisError`` if the subscription is not live
        within ``LIVE_TIMEOUT_S`` (Redis is unreachable)."""
        if not self._live.is_set():
            try:
                await asyncio.wait_for(self._live.wait(), self.LIVE_TIMEOUT_S)
            except TimeoutError:
                raise redis.TimeoutError("run events are not reachable") from None
        channel = channel_name(self.namespace, run_id).encode()
        signal = Signal(tenant_id)
        self._watchers.setdefault(channel, set()).add(signal)
        try:
            yield signal
        finally:
            watchers = self._watchers.get(channel, set())
            watchers.discard(signal)
            if not watchers:
                self._watchers.pop(channel, None)

    async def events_after(self, run_id: str, after: str) -> list[tuple[str, dict[str, Any]]]:
        """The run's events after stream id ``after`` (``0-0``: all), oldest first."""
        stream = run_stream_name(self.namespace, run_id)
        entries = await self.client.xrange(stream, min=f"({after}", count=1000)
        return [(_text(entry), loads((fields or {})[b"event"])) for entry, fields in entries or []]

    async def _read(self) -> None:
        while not self._closed:
            try:
                if self._pubsub.connection is None:
                    await self._pubsub.psubscribe(self._pattern)
                message = await self._pubsub.get_message(timeout=None)
            except (redis.RedisError, OSError) as exc:
                log.warning("run watch: no Redis; trying again", error=type(exc).__name__)
                self._live.clear()
                self._wake_all()
                await asyncio.sleep(self.RETRY_S)
                continue
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message["type"] == "pmessage":
            watchers = self._watchers.get(message["channel"])
            if watchers:
                event = _event(message["data"])
                for signal in watchers:
                    if event is None:  # not ours to read: the watcher reads the store
                        signal.notify(settled=True)
                    else:
                        signal.hear(event)
        elif message["type"] == "psubscribe":  # made, or made again after a reconnect
            self._live.set()
            self._wake_all()

    def _wake_all(self) -> None:
        for watchers in self._watchers.values():
            for signal in watchers:
                signal.notify(settled=True)


def _event(data: bytes) -> dict[str, Any] | None:
    """A channel message's event, or None (logged) if it is not one."""
    try:
        event = loads(data)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        log.warning("run watch: a message on a run's channel is not an event", size=len(data))
        return None
    return event


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
