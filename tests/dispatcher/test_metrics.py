"""``GET /metrics``: the text format, queue depths read from dramatiq's keys, the workers'
counters in Redis, and the runs in progress from the store. Redis: the embedded one, and the
machine's when TEST_REDIS_URL names it; the store: SQLite, and Postgres when configured."""

import math
import re
import uuid
from collections.abc import Iterator

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from dispatcher.api.app import create_app
from dispatcher.catalog import load_catalog
from dispatcher.metrics import (
    CONTENT_TYPE,
    Family,
    Labels,
    Observed,
    Sample,
    collect,
    count_attempt,
    count_run_finished,
    histogram,
    read_redis,
    read_store,
    render,
    simple,
)
from dispatcher.models import Run
from dispatcher.queue import enqueue_hop, make_broker, queue_name
from dispatcher.services import Services, build_services
from dispatcher.settings import Settings
from dispatcher.store import tenants
from tests.support.backends import TEST_REDIS_URL

Parsed = dict[tuple[str, frozenset[tuple[str, str]]], float]

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(?:,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse(text: str) -> Parsed:
    """Read the text format as a scraper does; fail on a sample whose family has no HELP and
    TYPE before it, or on a line that does not parse."""
    assert text.endswith("\n")
    declared: set[str] = set()
    samples: Parsed = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            declared.add(line.split()[2])
            continue
        if line.startswith("# HELP "):
            continue
        match = _SAMPLE.fullmatch(line)
        assert match, line
        name, raw_labels, value = match.groups()
        assert re.sub(r"_(bucket|sum|count)$", "", name) in declared or name in declared, line
        labels = {
            (key, re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group()], escaped))
            for key, escaped in _LABEL.findall(raw_labels or "")
        }
        samples[(name, frozenset(labels))] = float(value)
    return samples


def at(parsed: Parsed, name: str, **labels: str) -> float:
    return parsed[(name, frozenset(labels.items()))]


@pytest.fixture(params=["embedded"] + (["system"] if TEST_REDIS_URL else []))
def redis_url(request: pytest.FixtureRequest) -> str:
    if request.param == "system":
        return str(TEST_REDIS_URL)
    url: str = request.getfixturevalue("embedded_redis_url")
    return url


@pytest.fixture
def broker(settings: Settings, redis_url: str) -> Iterator[RedisBroker]:
    broker = make_broker(settings, redis_url)
    yield broker
    _forget(broker.client, settings.redis_namespace)
    broker.close()


@pytest.fixture
def services(settings: Settings, redis_url: str) -> Iterator[Services]:
    built = build_services(settings, redis_url)
    yield built
    _forget(built.redis, settings.redis_namespace)
    built.close()


def _forget(client: redis.Redis, namespace: str) -> None:
    for key in client.scan_iter(f"{namespace}:*"):
        client.delete(key)


# The text format.


def test_families_open_with_help_and_type_and_label_values_are_escaped() -> None:
    nasty = 'say "hi"\\now\nnext'
    family = simple(
        "x_total", "counter", "Counts\\things\nover lines.", {(("who", nasty), ("n", "1")): 3.0}
    )
    text = render([family, simple("y", "gauge", "A gauge.", {(): 0.25})])
    assert text == (
        "# HELP x_total Counts\\\\things\\nover lines.\n"
        "# TYPE x_total counter\n"
        'x_total{who="say \\"hi\\"\\\\now\\nnext",n="1"} 3\n'
        "# HELP y A gauge.\n"
        "# TYPE y gauge\n"
        "y 0.25\n"
    )
    assert at(parse(text), "x_total", who=nasty, n="1") == 3


def test_special_values_are_written_as_prometheus_reads_them() -> None:
    values: dict[Labels, float] = {
        (("v", "inf"),): math.inf,
        (("v", "nan"),): math.nan,
        (("v", "big"),): 1e300,
    }
    text = render([simple("g", "gauge", "Specials.", values)])
    assert 'g{v="inf"} +Inf\n' in text and 'g{v="nan"} NaN\n' in text
    assert 'g{v="big"} 1e+300\n' in text


def test_histogram_buckets_are_cumulative_up_to_inf_then_sum_and_count() -> None:
    observed = Observed(sum=12.5)
    observed.counts[0] = 2  # le=0.005
    observed.counts[7] = 1  # le=1
    observed.counts[-1] = 4  # +Inf only
    family = histogram("lat_seconds", "Latency.", {(("p", "a"),): observed})
    samples = {(s.name, dict(s.labels).get("le")): s.value for s in family.samples}
    assert samples[("lat_seconds_bucket", "0.005")] == 2
    assert samples[("lat_seconds_bucket", "0.5")] == 2
    assert samples[("lat_seconds_bucket", "1")] == 3
    assert samples[("lat_seconds_bucket", "600")] == 3
    assert samples[("lat_seconds_bucket", "+Inf")] == 7
    assert samples[("lat_seconds_sum", None)] == 12.5
    assert samples[("lat_seconds_count", None)] == 7
    buckets = [s.value for s in family.samples if s.name.endswith("_bucket")]
    assert buckets == sorted(buckets)
    assert family.samples[-1] == Sample("lat_seconds_count", (("p", "a"),), 7)
    assert render([family]).startswith(
        "# HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\n"
    )


def test_an_empty_family_is_still_declared() -> None:
    assert render([Family("z", "gauge", "Nothing yet.", ())]) == (
        "# HELP z Nothing yet.\n# TYPE z gauge\n"
    )


# Queue depths.


def _scrape(broker: RedisBroker, *providers: str) -> Parsed:
    queues = [queue_name(p) for p in providers]
    return parse(render(read_redis(broker.client, broker.namespace, queues)))


def _states(parsed: Parsed, provider: str) -> dict[str, float]:
    queue = queue_name(provider)
    states = ("ready", "handling", "delayed", "dead")
    return {s: at(parsed, "dispatcher_queue_messages", queue=queue, state=s) for s in states}


def test_queue_depths_count_ready_and_delayed_messages_per_queue(broker: RedisBroker) -> None:
    for number in range(3):
        enqueue_hop(broker, f"run_{number}", 0, "openai")
    enqueue_hop(broker, "run_later", 1, "openai", delay_s=60)
    enqueue_hop(broker, "run_s", 0, "simulated")

    parsed = _scrape(broker, "openai", "simulated", "fal")
    assert _states(parsed, "openai") == {"ready": 3, "handling": 0, "delayed": 1, "dead": 0}
    assert _states(parsed, "simulated") == {"ready": 1, "handling": 0, "delayed": 0, "dead": 0}
    assert _states(parsed, "fal") == {"ready": 0, "handling": 0, "delayed": 0, "dead": 0}


def test_a_delayed_message_a_worker_holds_until_its_time_is_still_delayed(
    broker: RedisBroker,
) -> None:
    """dramatiq's worker fetches delayed messages ahead and keeps them, unacknowledged, until
    their eta: they leave the delay queue's list but are still waiting."""
    enqueue_hop(broker, "run_later", 1, "openai", delay_s=60)
    consumer = broker.consume(dq_name(queue_name("openai")), prefetch=10, timeout=100)
    assert next(consumer) is not None
    assert _states(_scrape(broker, "openai"), "openai") == {
        "ready": 0, "handling": 0, "delayed": 1, "dead": 0,
    }  # fmt: skip


def test_a_fetched_message_is_handling_until_acked_and_dead_once_nacked(
    broker: RedisBroker,
) -> None:
    for number in range(3):
        enqueue_hop(broker, f"run_{number}", 0, "openai")
    consumer = broker.consume(queue_name("openai"), prefetch=2, timeout=100)
    first, second = next(consumer), next(consumer)
    assert first is not None and second is not None
    assert _states(_scrape(broker, "openai"), "openai") == {
        "ready": 1, "handling": 2, "delayed": 0, "dead": 0,
    }  # fmt: skip

    consumer.ack(first)
    consumer.nack(second)
    assert _states(_scrape(broker, "openai"), "openai") == {
        "ready": 1, "handling": 0, "delayed": 0, "dead": 1,
    }  # fmt: skip


# The workers' counters.


def test_counters_are_added_by_the_callers_pipeline_in_its_one_round_trip(
    broker: RedisBroker,
) -> None:
    namespace, client = broker.namespace, broker.client
    pipe = client.pipeline(transaction=False)
    count_attempt(
        pipe, namespace, provider="openai", outcome="failed", error_class="rate_limited",
        latency_ms=40, run_status=None,
    )  # fmt: skip
    count_attempt(
        pipe, namespace, provider="simulated", outcome="succeeded", error_class=None,
        latency_ms=100, run_status="succeeded",
    )  # fmt: skip
    assert len(pipe) == 7
    assert client.keys(f"{namespace}:metrics:*") == []  # nothing sent before the caller's execute
    pipe.execute()

    parsed = _scrape(broker)
    assert at(
        parsed, "dispatcher_attempts_total",
        provider="openai", outcome="failed", error_class="rate_limited",
    ) == 1  # fmt: skip
    assert at(
        parsed, "dispatcher_attempts_total",
        provider="simulated", outcome="succeeded", error_class="none",
    ) == 1  # fmt: skip
    assert at(parsed, "dispatcher_runs_finished_total", status="succeeded") == 1


def test_attempt_latency_lands_in_the_right_buckets_from_every_client(
    broker: RedisBroker, redis_url: str
) -> None:
    """Two clients stand for two worker processes: both add to the same numbers. A latency on
    a bucket's bound counts in that bucket (``le``: less or equal)."""
    other = redis.Redis.from_url(redis_url)
    latencies: list[tuple[redis.Redis, list[float]]] = [
        (broker.client, [3, 100, 2000]),
        (other, [100.5, 1_000_000]),
    ]
    for client, each in latencies:
        pipe = client.pipeline(transaction=False)
        for latency_ms in each:
            count_attempt(
                pipe, broker.namespace, provider="openai", outcome="succeeded",
                error_class=None, latency_ms=latency_ms,
            )  # fmt: skip
        pipe.execute()
    other.close()

    parsed = _scrape(broker)
    series = {"provider": "openai", "outcome": "succeeded"}
    name = "dispatcher_attempt_duration_seconds"
    expected = {"0.005": 1, "0.05": 1, "0.1": 2, "0.25": 3, "2.5": 4, "600": 4, "+Inf": 5}
    for le, count in expected.items():
        assert at(parsed, f"{name}_bucket", le=le, **series) == count, le
    assert at(parsed, f"{name}_count", **series) == 5
    assert at(parsed, f"{name}_sum", **series) == pytest.approx(1002.2035)
    total = at(parsed, "dispatcher_attempts_total", error_class="none", **series)
    assert total == 5


def test_runs_ended_without_an_attempt_are_counted_alone(broker: RedisBroker) -> None:
    count_run_finished(broker.client, broker.namespace, "canceled")
    count_run_finished(broker.client, broker.namespace, "canceled")
    assert at(_scrape(broker), "dispatcher_runs_finished_total", status="canceled") == 2


# The store.


def _add_runs(engine: Engine, *statuses: str) -> None:
    """Runs stored straight in the table, one per status."""
    with Session(engine) as session:
        tenant_id = tenants.create_tenant(session, f"metrics-{uuid.uuid4().hex[:6]}").id
        for status in statuses:
            session.add(
                Run(
                    id=f"run_{uuid.uuid4().hex}", tenant_id=tenant_id, app="simulated/echo",
                    status=status, input={}, chain=[{"provider": "simulated"}],
                )
            )  # fmt: skip
        session.commit()


def test_runs_in_progress_count_queued_and_running_only(engine: Engine) -> None:
    _add_runs(engine, "queued", "queued", "running", "succeeded", "failed", "canceled")
    parsed = parse(render(read_store(engine)))
    assert at(parsed, "dispatcher_runs_in_progress", status="queued") == 2
    assert at(parsed, "dispatcher_runs_in_progress", status="running") == 1
    assert len(parsed) == 2


# The endpoint.


def _client(services: Services) -> TestClient:
    return TestClient(create_app(services))


def test_the_endpoint_answers_a_scrape_without_a_key(services: Services) -> None:
    _add_runs(services.engine, "queued", "running")
    enqueue_hop(services.broker, "run_1", 0, "simulated")
    with _client(services) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    parsed = parse(response.text)
    assert at(parsed, "dispatcher_queue_messages", queue="run.simulated", state="ready") == 1
    assert at(parsed, "dispatcher_runs_in_progress", status="queued") == 1
    assert at(parsed, "dispatcher_runs_in_progress", status="running") == 1
    queues = {
        dict(labels)["queue"] for name, labels in parsed if name == "dispatcher_queue_messages"
    }
    assert queues == {queue_name(p) for p in load_catalog().providers} | {"webhooks"}
    assert at(parsed, "dispatcher_metrics_source_up", source="redis") == 1
    assert at(parsed, "dispatcher_metrics_source_up", source="store") == 1


def test_when_redis_is_down_the_store_figures_are_still_served(engine: Engine) -> None:
    down = redis.Redis.from_url("redis://127.0.0.1:1/0")
    parsed = parse(collect(down, engine, "ns", [queue_name("openai")]))
    assert at(parsed, "dispatcher_metrics_source_up", source="redis") == 0
    assert at(parsed, "dispatcher_metrics_source_up", source="store") == 1
    assert at(parsed, "dispatcher_runs_in_progress", status="queued") == 0
    assert not any(name == "dispatcher_queue_messages" for name, _ in parsed)
