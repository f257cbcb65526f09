"""Metrics for operators, in Prometheus's text format (0.0.4), served at ``GET /metrics``.

What a scrape answers, and where each figure comes from::

    dispatcher_queue_messages{queue, state}            gauge      Redis: dramatiq's queue keys
        ready     on the queue, waiting for a worker              LLEN  {ns}:<queue>
        handling  fetched by a worker, not yet acknowledged       HLEN  {ns}:<queue>.msgs - ready
        delayed   waiting for their time (a retry-after, a poll)  HLEN  {ns}:<queue>.DQ.msgs
        dead      failed and dead-lettered (dramatiq keeps them)  ZCARD {ns}:<queue>.XQ
    dispatcher_runs_in_progress{status}                 gauge      the store: queued, running
    dispatcher_attempts_total{provider, outcome, error_class}   counter    Redis hashes that
    dispatcher_attempt_duration_seconds{provider, outcome}      histogram  every worker adds to
    dispatcher_runs_finished_total{status}                      counter    (``count_attempt``,
                                                                           ``count_run_finished``)
    dispatcher_metrics_source_up{source}                gauge      1: redis / store answered

A worker acknowledges a hop's message once the provider call is started, so ``handling`` is
brief; the calls under way show as ``running`` runs.

The counters live in Redis so that every worker process adds to the same numbers::

    {ns}:metrics:attempts          ["<provider>","<outcome>","<error class>"] -> attempts
    {ns}:metrics:attempt_seconds   ["<provider>","<outcome>","<le>"] -> attempts in that bucket
                                   ["<provider>","<outcome>","sum"] -> their seconds, summed
    {ns}:metrics:runs_finished     "<status>" -> runs

A worker adds to them with ``count_attempt`` on the pipeline it already sends, so counting costs
no round trip. A scrape reads every Redis figure in one transaction (one round trip) and the
store's in one indexed query (``ix_run_status_lease`` leads with ``status``).
"""

import json
import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import redis
import structlog
from dramatiq.common import dq_name, xq_name
from sqlalchemy import Engine, func
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from dispatcher.jsontext import dumps
from dispatcher.models import Run

log = structlog.get_logger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The upper bounds (seconds) of the attempt latency histogram's buckets; ``+Inf`` follows.
BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
)  # fmt: skip
#: The ``error_class`` label of an attempt that succeeded.
NO_ERROR = "none"
LIVE_STATUSES = ("queued", "running")

Labels = tuple[tuple[str, str], ...]
Kind = Literal["counter", "gauge", "histogram"]


# The exposition.


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Labels
    value: float


@dataclass(frozen=True)
class Family:
    name: str
    kind: Kind
    help: str
    samples: tuple[Sample, ...]


@dataclass
class Observed:
    """One histogram series: attempts per bucket (not cumulative; the last is ``+Inf``) and
    their sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_S) + 1))
    sum: float = 0.0


def render(families: Iterable[Family]) -> str:
    lines = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape(family.help, quote=False)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        lines.extend(_line(sample) for sample in family.samples)
    return "\n".join(lines) + "\n"


def simple(name: str, kind: Kind, help: str, values: Mapping[Labels, float]) -> Family:
    """A counter or gauge family: one sample per label set."""
    samples = tuple(Sample(name, labels, value) for labels, value in sorted(values.items()))
    return Family(name, kind, help, samples)


def histogram(name: str, help: str, series: Mapping[Labels, Observed]) -> Family:
    """A histogram family: per series, cumulative ``_bucket`` samples ending at ``+Inf``, then
    ``_sum`` and ``_count``."""
    samples: list[Sample] = []
    for labels, observed in sorted(series.items()):
        bounds = [*BUCKETS_S, math.inf]
        total = 0
        for bound, count in zip(bounds, observed.counts, strict=True):
            total += count
            samples.append(Sample(f"{name}_bucket", (*labels, ("le", _number(bound))), total))
        samples.append(Sample(f"{name}_sum", labels, observed.sum))
        samples.append(Sample(f"{name}_count", labels, total))
    return Family(name, "histogram", help, tuple(samples))


def _line(sample: Sample) -> str:
    labels = ",".join(f'{key}="{_escape(value, quote=True)}"' for key, value in sample.labels)
    braced = f"{{{labels}}}" if labels else ""
    return f"{sample.name}{braced} {_number(sample.value)}"


def _escape(text: str, *, quote: bool) -> str:
    """Backslash and newline escaped (HELP text); in a label value, the double quote too."""
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quote else text


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


# Counting (workers).


def count_attempt(
    pipe: redis.Redis,
    namespace: str,
    *,
    provider: str,
    outcome: str,
    error_class: str | None,
    latency_ms: float,
    run_status: str | None = None,
) -> None:
    """Count one recorded attempt, and the run it ended (``run_status``: its final status;
    None while the run goes on). Adds commands to ``pipe`` and sends nothing: pass the pipeline
    that goes out anyway after the attempt is recorded. (Given a client, each command is
    sent at once: a round trip each.)"""
    seconds = max(latency_ms, 0.0) / 1000
    pipe.hincrby(_key(namespace, "attempts"), _field(provider, outcome, error_class or NO_ERROR))
    latency = _key(namespace, "attempt_seconds")
    pipe.hincrby(latency, _field(provider, outcome, _le(_bucket(seconds))))
    pipe.hincrbyfloat(latency, _field(provider, outcome, "sum"), seconds)
    if run_status is not None:
        count_run_finished(pipe, namespace, run_status)


def count_run_finished(pipe: redis.Redis, namespace: str, status: str) -> None:
    """Count one run that ended, as a command added to ``pipe``. ``count_attempt`` calls it
    for a run its attempt ended; the paths that end a run with no attempt (a cancel, a chain
    whose hops are all passed over) call it themselves."""
    pipe.hincrby(_key(namespace, "runs_finished"), status)


def _key(namespace: str, name: str) -> str:
    return f"{namespace}:metrics:{name}"


def _field(*parts: str) -> str:
    return dumps(parts)


def _bucket(seconds: float) -> int:
    """The index of the first bucket whose bound is at or above ``seconds``
    (``len(BUCKETS_S)``: ``+Inf``)."""
    return bisect_left(BUCKETS_S, seconds)


def _le(bucket: int) -> str:
    return _number(BUCKETS_S[bucket]) if bucket < len(BUCKETS_S) else "+Inf"


# Reading (a scrape).


def collect(client: redis.Redis, engine: Engine, namespace: str, queues: Sequence[str]) -> str:
    """Every family, rendered. A source that does not answer leaves its families out and
    its ``dispatcher_metrics_source_up`` at 0; the other's are still served."""
    sources: dict[str, Callable[[], list[Family]]] = {
        "redis": lambda: read_redis(client, namespace, queues),
        "store": lambda: read_store(engine),
    }
    families: list[Family] = []
    up: dict[Labels, float] = {}
    for source, read in sources.items():
        try:
            families += read()
        except (redis.RedisError, SQLAlchemyError) as exc:
            log.warning("metrics source unreadable", source=source, error=type(exc).__name__)
            up[(("source", source),)] = 0
        else:
            up[(("source", source),)] = 1
    help = "1 when the source answered this scrape; 0: its figures are missing."
    families.append(simple("dispatcher_metrics_source_up", "gauge", help, up))
    return render(families)


def read_redis(client: redis.Redis, namespace: str, queues: Sequence[str]) -> list[Family]:
    """The queues' depths and the workers' counters, in one transaction."""
    pipe = client.pipeline(transaction=True)
    for queue in queues:
        base = f"{namespace}:{queue}"
        pipe.llen(base)
        pipe.hlen(f"{base}.msgs")
        pipe.hlen(f"{namespace}:{dq_name(queue)}.msgs")
        pipe.zcard(f"{namespace}:{xq_name(queue)}")
    for name in ("attempts", "attempt_seconds", "runs_finished"):
        pipe.hgetall(_key(namespace, name))
    replies = pipe.execute()
    depths, (attempts, latency, finished) = replies[: 4 * len(queues)], replies[-3:]
    return [
        _queue_family(queues, depths),
        _attempts_family(attempts),
        _latency_family(latency),
        _finished_family(finished),
    ]


def read_store(engine: Engine) -> list[Family]:
    """The runs queued and running now."""
    query = (
        select(Run.status, func.count())
        .where(col(Run.status).in_(LIVE_STATUSES))
        .group_by(col(Run.status))
    )
    with Session(engine) as session:
        counts = dict.fromkeys(LIVE_STATUSES, 0) | dict(session.exec(query).all())
    help = "Runs waiting (queued) and under way (running: an attempt, or a provider's job)."
    values: dict[Labels, float] = {(("status", s),): n for s, n in counts.items()}
    return [simple("dispatcher_runs_in_progress", "gauge", help, values)]


def _queue_family(queues: Sequence[str], depths: list[int]) -> Family:
    values: dict[Labels, float] = {}
    for index, queue in enumerate(queues):
        ready, unacked, delayed, dead = depths[4 * index : 4 * index + 4]
        states = {"ready": ready, "handling": max(unacked - ready, 0), "delayed": delayed}
        for state, count in (states | {"dead": dead}).items():
            values[(("queue", queue), ("state", state))] = count
    help = (
        "Messages on a queue: ready (waiting for a worker), handling (fetched, not yet "
        "acknowledged), delayed (waiting for their time), dead (failed, dead-lettered)."
    )
    return simple("dispatcher_queue_messages", "gauge", help, values)


def _attempts_family(stored: dict[Any, Any]) -> Family:
    values: dict[Labels, float] = {}
    for raw, count in stored.items():
        provider, outcome, error_class = json.loads(raw)
        labels = (("provider", provider), ("outcome", outcome), ("error_class", error_class))
        values[labels] = int(count)
    help = "Provider attempts recorded, per provider, outcome and error class."
    return simple("dispatcher_attempts_total", "counter", help, values)


def _finished_family(stored: dict[Any, Any]) -> Family:
    values: dict[Labels, float] = {
        (("status", status.decode()),): int(count) for status, count in stored.items()
    }
    return simple("dispatcher_runs_finished_total", "counter", "Runs ended, per status.", values)


def _latency_family(stored: dict[Any, Any]) -> Family:
    series: dict[Labels, Observed] = {}
    for raw, value in stored.items():
        provider, outcome, le = json.loads(raw)
        observed = series.setdefault((("provider", provider), ("outcome", outcome)), Observed())
        if le == "sum":
            observed.sum = float(value)
        else:
            observed.counts[_bucket(float(le))] += int(value)
    help = (
        "Provider attempts' latency in seconds, from the call's start (a polled job's: its "
        "submission) to its outcome."
    )
    return histogram("dispatcher_attempt_duration_seconds", help, series)
