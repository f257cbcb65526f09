"""Run events published in one round trip, in order, over the real Redis."""

import json
from collections.abc import Iterator

import pytest
import redis

from dispatcher.events import RunEvent, RunEvents
from dispatcher.settings import Settings


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
