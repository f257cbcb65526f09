"""Run events published in one round trip, in order, over the real Redis."""

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from dispatcher.events import MAX_CHANNEL_RUN_BYTES, RunEvent, RunEvents, RunWatch
from dispatcher.settings import Settings
from schemas.runs import RunPublic


@pytest.fixture
def events(settings: Settings) -> Iterator[RunEvents]:
    client = redis.Redis.from_url(settings.locate_redis())
    yield RunEvents(client, settings.redis_namespace)
    client.close()


def _types(events: RunEvents, run_id: str) -> list[str]:
    entries = events.client.xrange(events.run_stream(run_id))
    return [json.loads(fields[b"event"])["type"] for _, fields in entries]


def test_many_events_of_many_runs_land_in_order_in_each_runs_stream(events: RunEvents) -> None:
    events.publish_many(
        [
            RunEvent("run_a", "ten_1", "running", {"attempt": 1}),
            RunEvent("run_b", "ten_1", "running", {"attempt": 1}),
            RunEvent("run_a", "ten_1", "attempt_failed", {"error_class": "rate_limited"}),
            RunEvent("run_a", "ten_1", "fell_back", {"to_hop": 1}),
            RunEvent("run_b", "ten_1", "succeeded", {"provider": "openai"}),
        ]
    )
    assert _types(events, "run_a") == ["running", "attempt_failed", "fell_back"]
    assert _types(events, "run_b") == ["running", "succeeded"]
    assert events.client.xlen(events.stream()) == 5


def test_a_server_that_lost_its_scripts_still_gets_every_event_once(events: RunEvents) -> None:
    events.client.script_flush()
    events.publish_many(
        [RunEvent("run_c", "ten_1", "running", {}), RunEvent("run_c", "ten_1", "succeeded", {})]
    )
    assert _types(events, "run_c") == ["running", "succeeded"]


def test_an_event_a_runs_webhook_subscribed_to_goes_to_the_outbox(events: RunEvents) -> None:
    events.client.hset(
        events.hook("run_d"), mapping={"url": "https://x.test/h", "events": "succeeded"}
    )
    events.publish_many(
        [RunEvent("run_d", "ten_1", "running", {}), RunEvent("run_d", "ten_1", "succeeded", {})]
    )
    outbox = events.client.xrange(events.outbox())
    assert [json.loads(fields[b"event"])["type"] for _, fields in outbox] == ["succeeded"]
    assert not events.client.exists(events.hook("run_d"))  # the terminal event ends it


def test_closing_a_watch_ends_even_when_its_reader_turns_the_cancel_into_an_error(
    settings: Settings,
) -> None:
    """redis-py can answer a cancelled read with a connection error; the reader would then
    retry forever and the API's shutdown would wait on it."""

    async def scenario() -> bool:
        watch = RunWatch(aioredis.Redis.from_url(settings.locate_redis()), "closing")

        async def read_then_fail_on_cancel(**_: Any) -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                raise redis.ConnectionError("connection closed while reading") from None

        watch._pubsub.get_message = read_then_fail_on_cancel  # type: ignore[method-assign]
        watch.RETRY_S = 0.01
        await watch.start()
        await asyncio.sleep(0.1)
        await asyncio.wait_for(watch.close(), 10)
        return True

    assert asyncio.run(scenario())


def test_a_watcher_hears_an_event_published_the_moment_it_entered(settings: Settings) -> None:
    """The process's one pattern subscription is live before anyone watches: entering sends
    nothing and waits for nothing, so an event published right after is heard, for each of
    many watchers, and runs nobody watches are dropped."""
    namespace = f"watch{uuid.uuid4().hex[:6]}"
    publisher = RunEvents(redis.Redis.from_url(settings.locate_redis()), namespace)

    async def scenario() -> list[bool]:
        watch = RunWatch(aioredis.Redis.from_url(settings.locate_redis()), namespace)
        await watch.start()

        async def wait_for(run_id: str) -> bool:
            async with watch.watch(run_id) as signal:
                await asyncio.to_thread(publisher.publish, f"{run_id}_other", "ten_1", "succeeded")
                await asyncio.to_thread(publisher.publish, run_id, "ten_1", "succeeded")
                return await asyncio.wait_for(signal.settled.wait(), 5)

        try:
            return await asyncio.gather(*(wait_for(f"run_{n}") for n in range(100)))
        finally:
            assert watch._watchers == {}  # every watcher left
            await watch.close()

    assert asyncio.run(scenario()) == [True] * 100
    publisher.client.close()


def test_a_lost_subscription_wakes_every_watcher_and_comes_back(settings: Settings) -> None:
    """Events published while the connection is down are missed: its watchers are woken as
    settled (they read the store again), and once redis-py has reconnected, later events are
    heard again."""
    namespace = f"watch{uuid.uuid4().hex[:6]}"
    publisher = RunEvents(redis.Redis.from_url(settings.locate_redis()), namespace)

    async def scenario() -> tuple[bool, bool]:
        watch = RunWatch(aioredis.Redis.from_url(settings.locate_redis()), namespace)
        watch.RETRY_S = 0.05
        await watch.start()
        try:
            async with watch.watch("run_a") as signal:
                killed = await asyncio.to_thread(
                    publisher.client.client_kill_filter, _type="pubsub"
                )
                assert killed >= 1
                woken = await asyncio.wait_for(signal.settled.wait(), 5)
            async with watch.watch("run_b") as signal:  # waits until it is live again
                await asyncio.to_thread(publisher.publish, "run_b", "ten_1", "failed")
                heard = await asyncio.wait_for(signal.settled.wait(), 5)
            return woken, heard
        finally:
            await watch.close()

    assert asyncio.run(scenario()) == (True, True)
    publisher.client.close()


def test_a_submit_that_waits_is_still_stored_when_run_events_are_unreachable() -> None:
    """If the watch cannot be entered, the run is created all the same and read once."""
    from dispatcher.api.events import wait_for_run

    class Unreachable:
        @contextlib.asynccontextmanager
        async def watch(self, run_id: str, tenant_id: str) -> AsyncIterator[None]:
            raise redis.TimeoutError("run events are not reachable")
            yield

    done: list[str] = []

    async def start() -> None:
        done.append("stored")

    def load() -> None:
        done.append("read")

    found = asyncio.run(wait_for_run(Unreachable(), "run_x", "ten_1", load, 5, start=start))  # type: ignore[arg-type]
    assert found is None and done == ["stored", "read"]


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _finished_run(run_id: str, text: str = "hi") -> dict[str, Any]:
    return {
        "id": run_id, "app": "openai/gpt-4o-mini", "status": "succeeded",
        "output": {"text": text}, "error": None, "usage": None, "cost_usd": 0.0,
        "provider": "openai", "model": "gpt-4o-mini", "credential_kind": "shared",
        "credential_name": None, "metadata": None, "routing_version": None, "policy": None,
        "attempts": [], "created_at": "2026-11-22T10:00:00Z",
        "timings": {
            "created_at": "2026-11-22T10:00:00Z", "started_at": None, "finished_at": None,
            "queued_ms": None, "total_ms": None,
        },
    }  # fmt: skip


def test_a_terminal_event_carries_its_run_to_waiters_of_its_tenant_only(
    settings: Settings, events: RunEvents
) -> None:
    """The run rides on the pub/sub message alone: waiters of the run's tenant get it; a
    waiter of another tenant, and the streams (kept, read by other systems and webhooks),
    never see it; a run too large for a message is left out, and its waiters read the
    store."""
    namespace = events.namespace
    huge = "x" * (MAX_CHANNEL_RUN_BYTES + 1)

    async def scenario() -> list[dict[str, Any] | None]:
        watch = RunWatch(aioredis.Redis.from_url(settings.locate_redis()), namespace)
        await watch.start()
        try:
            async with (
                watch.watch("run_s", "ten_1") as mine,
                watch.watch("run_s", "ten_2") as theirs,
                watch.watch("run_h", "ten_1") as huge_one,
            ):
                await asyncio.to_thread(
                    events.publish_many,
                    [
                        RunEvent("run_s", "ten_1", "succeeded", {}, _json(_finished_run("run_s"))),
                        RunEvent(
                            "run_h", "ten_1", "succeeded", {}, _json(_finished_run("run_h", huge))
                        ),
                    ],
                )
                for signal in (mine, theirs, huge_one):
                    await asyncio.wait_for(signal.settled.wait(), 5)
                return [mine.run, theirs.run, huge_one.run]
        finally:
            await watch.close()

    assert asyncio.run(scenario()) == [_finished_run("run_s"), None, None]
    for run_id in ("run_s", "run_h"):
        ((_, fields),) = events.client.xrange(events.run_stream(run_id))
        assert "run" not in json.loads(fields[b"event"])


def test_a_carried_run_keeps_integers_beyond_64_bits_exact(
    settings: Settings, events: RunEvents
) -> None:
    """Events are read back by ``jsontext.loads``: a reader that turned such integers into
    floats would hand the waiter an output that is not the one stored."""
    run = _finished_run("run_b") | {"output": {"n": 2**70 + 1, "m": -(2**65) - 3}}

    async def scenario() -> dict[str, Any] | None:
        watch = RunWatch(aioredis.Redis.from_url(settings.locate_redis()), events.namespace)
        await watch.start()
        try:
            async with watch.watch("run_b", "ten_1") as signal:
                await asyncio.to_thread(
                    events.publish_many, [RunEvent("run_b", "ten_1", "succeeded", {}, _json(run))]
                )
                await asyncio.wait_for(signal.settled.wait(), 5)
                return signal.run
        finally:
            await watch.close()

    heard = asyncio.run(scenario())
    assert heard is not None and heard["output"] == {"n": 2**70 + 1, "m": -(2**65) - 3}


def test_a_waiting_client_is_answered_from_the_terminal_event_without_reading_the_store(
    settings: Settings, events: RunEvents
) -> None:
    from dispatcher.api.events import wait_for_run

    reads: list[str] = []

    def load() -> RunPublic | None:
        reads.append("read")
        return RunPublic.model_validate(_finished_run("run_w", "from the store"))

    async def scenario() -> tuple[RunPublic | None, RunPublic | None]:
        watch = RunWatch(aioredis.Redis.from_url(settings.locate_redis()), events.namespace)
        await watch.start()

        async def finish(run_id: str, run: bytes | None) -> None:
            await asyncio.to_thread(
                events.publish_many, [RunEvent(run_id, "ten_1", "succeeded", {}, run)]
            )

        try:
            carried = await wait_for_run(
                watch, "run_w", "ten_1", load, 5,
                start=lambda: finish("run_w", _json(_finished_run("run_w", "from the event"))),
            )  # fmt: skip
            bare = await wait_for_run(
                watch, "run_w", "ten_1", load, 5, start=lambda: finish("run_w", None)
            )
            return carried, bare
        finally:
            await watch.close()

    carried, bare = asyncio.run(scenario())
    assert carried is not None and carried.output == {"text": "from the event"}
    assert bare is not None and bare.output == {"text": "from the store"}
    assert reads == ["read"]  # only the event without its run sent the waiter to the store


def test_a_message_that_is_no_event_wakes_its_watcher_and_the_watch_goes_on(
    settings: Settings, events: RunEvents
) -> None:
    """Whatever else lands on a run's channel cannot stop the process's one listener: its
    watchers are woken to read the store, and later events are heard as before."""

    async def scenario() -> tuple[bool, dict[str, Any] | None, bool]:
        watch = RunWatch(aioredis.Redis.from_url(settings.locate_redis()), events.namespace)
        await watch.start()
        try:
            async with watch.watch("run_g", "ten_1") as garbled, watch.watch("run_n") as next_:
                for data in (b"not json", b"[1, 2]"):
                    events.client.publish(events.channel("run_g"), data)
                woken = await _heard(garbled.settled)
                await asyncio.to_thread(events.publish, "run_n", "ten_1", "succeeded")
                return woken, garbled.run, await _heard(next_.settled)
        finally:
            await watch.close()

    assert asyncio.run(scenario()) == (True, None, True)


async def _heard(event: asyncio.Event) -> bool:
    await asyncio.wait_for(event.wait(), 5)
    return True
