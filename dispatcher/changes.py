"""Caches of tenant configuration, dropped the moment that configuration changes.

The hot paths read the same few rows for every run: the API a tenant's routing config and
credential list, a worker the credential it calls with. ``OwnerCache`` keeps them in the process,
per owner (a tenant id, or the platform's ``PLATFORM_OWNER``). Whoever changes an owner's
configuration -- the API's routing and credentials endpoints, a worker marking a credential
unhealthy -- calls ``ConfigChanges.announce(owner)`` after its commit; every process's
``ChangeListener`` hears it on one Redis channel and drops that owner's entries.

Pub/sub delivers at most once: a listener that loses its connection may miss announcements, so on
every (re)subscribe it drops everything, and every entry also ends after ``ttl_s`` whatever
happens. A process that announces also drops its own entries at once, without waiting for the
round trip, so a client that changes its config and submits next sees the change.
"""

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

import redis
import structlog

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

log = structlog.get_logger(__name__)

#: How long the listener waits before subscribing again after Redis went away.
RECONNECT_S = 0.5


class Droppable(Protocol):
    def drop(self, owner: str | None) -> None: ...


def channel_name(namespace: str) -> str:
    return f"{namespace}:config-changed"


class OwnerCache(Generic[K, V]):
    """Values per ``(owner, key)``, each kept for ``ttl_s`` at most; ``ttl_s`` 0 keeps nothing."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._values: dict[str, dict[K, tuple[V, float]]] = {}
        self._lock = threading.Lock()

    def peek(self, owner: str, key: K) -> V | None:
        """The cached value, or None when there is none; never loads."""
        hit = self._hit(owner, key, time.monotonic())
        return hit[0] if hit is not None else None

    def get(self, owner: str, key: K, load: Callable[[], V]) -> V:
        """The cached value, or ``load()``'s (cached unless the owner changed meanwhile)."""
        now = time.monotonic()
        hit = self._hit(owner, key, now)
        if hit is not None:
            return hit[0]
        with self._lock:
            generation = self._values.setdefault(owner, {})
        value = load()
        if self.ttl_s > 0:
            with self._lock:
                # Dropped while loading (the owner changed): the value may be stale; keep nothing.
                if self._values.get(owner) is generation:
                    generation[key] = (value, now + self.ttl_s)
        return value

    def _hit(self, owner: str, key: K, now: float) -> tuple[V, float] | None:
        entries = self._values.get(owner)
        hit = entries.get(key) if entries else None
        return hit if hit is not None and hit[1] > now else None

    def drop(self, owner: str | None) -> None:
        """Forget one owner's values (None: everyone's)."""
        with self._lock:
            if owner is None:
                self._values = {}
            else:
                self._values.pop(owner, None)


class ConfigChanges:
    """Announces an owner's configuration change to every process's listener."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.channel = channel_name(namespace)
        self.local: list[Droppable] = []

    def announce(self, owner: str) -> None:
        """Call after the change is committed. A Redis failure is logged, not raised: the
        change is stored, and every cache lets it in within its ``ttl_s``."""
        for cache in self.local:
            cache.drop(owner)
        try:
            self.client.publish(self.channel, owner)
        except redis.RedisError:
            log.warning("config change not announced; caches expire it", exc_info=True)


class ChangeListener:
    """A daemon thread that drops the changed owner's entries from ``caches``."""

    def __init__(self, client: redis.Redis, namespace: str, caches: list[Droppable]) -> None:
        self.client = client
        self.channel = channel_name(namespace)
        self.caches = caches
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="config-changes", daemon=True)
        #: Set once the first subscription is confirmed (tests wait on it).
        self.subscribed = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _drop(self, owner: str | None) -> None:
        for cache in self.caches:
            cache.drop(owner)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except redis.RedisError:
                log.warning("config change channel lost; resubscribing", exc_info=True)
            self._drop(None)
            self._stop.wait(RECONNECT_S)

    def _listen(self) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=False)  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(self.channel)
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=0.5)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    self._drop(None)  # anything announced before now may have been missed
                    self.subscribed.set()
                elif message["type"] == "message":
                    data = message["data"]
                    self._drop(data.decode() if isinstance(data, bytes) else str(data))
        finally:
            pubsub.close()
