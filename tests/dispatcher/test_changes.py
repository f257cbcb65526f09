"""Owner caches: kept for their TTL, dropped by an announced change in any process."""

import threading
import uuid

import redis

from dispatcher.changes import ChangeListener, ConfigChanges, OwnerCache
from dispatcher.settings import Settings


class Loads:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> int:
        self.count += 1
        return self.count


def test_a_value_is_kept_until_its_owner_is_dropped() -> None:
    cache: OwnerCache[str, int] = OwnerCache(ttl_s=60)
    load = Loads()
    assert cache.get("t1", "routes", load) == 1
    assert cache.get("t1", "routes", load) == 1
    cache.drop("t2")
    assert cache.get("t1", "routes", load) == 1
    cache.drop("t1")
    assert cache.get("t1", "routes", load) == 2
    cache.drop(None)
    assert cache.get("t1", "routes", load) == 3


def test_a_ttl_of_zero_keeps_nothing() -> None:
    cache: OwnerCache[str, int] = OwnerCache(ttl_s=0)
    load = Loads()
    assert [cache.get("t1", "k", load) for _ in range(3)] == [1, 2, 3]


def test_a_value_loaded_while_its_owner_changed_is_not_kept() -> None:
    cache: OwnerCache[str, int] = OwnerCache(ttl_s=60)

    def load_across_a_change() -> int:
        cache.drop("t1")  # the change lands while the old value is being read
        return 0

    assert cache.get("t1", "k", load_across_a_change) == 0
    assert cache.get("t1", "k", lambda: 7) == 7


def test_an_announced_change_reaches_another_process_listener(settings: Settings) -> None:
    client = redis.Redis.from_url(str(settings.redis_url))
    namespace = f"changes{uuid.uuid4().hex[:6]}"
    theirs: OwnerCache[str, int] = OwnerCache(ttl_s=60)
    listener = ChangeListener(client, namespace, [theirs])
    listener.start()
    try:
        assert listener.subscribed.wait(5)
        assert theirs.get("t1", "k", lambda: 1) == 1
        mine: OwnerCache[str, int] = OwnerCache(ttl_s=60)
        assert mine.get("t1", "k", lambda: 1) == 1
        changes = ConfigChanges(client, namespace)
        changes.local.append(mine)
        dropped = threading.Event()
        original = theirs.drop

        def noting_drop(owner: str | None) -> None:
            original(owner)
            if owner == "t1":
                dropped.set()

        theirs.drop = noting_drop  # type: ignore[method-assign]
        changes.announce("t1")
        assert mine.get("t1", "k", lambda: 2) == 2  # the announcing process: at once
        assert dropped.wait(5)
        assert theirs.get("t1", "k", lambda: 2) == 2
    finally:
        listener.stop()
        client.close()


def test_peek_gives_what_is_held_and_never_loads() -> None:
    cache: OwnerCache[str, int] = OwnerCache(ttl_s=60)
    assert cache.peek("t1", "k") is None
    cache.get("t1", "k", lambda: 5)
    assert cache.peek("t1", "k") == 5
    cache.drop("t1")
    assert cache.peek("t1", "k") is None
