"""The executor's rules for a provider's job a run waits on (fal): when it is polled next,
when it is given up, and what the run and its attempt keep of it."""

import json
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from dispatcher.db import utcnow
from dispatcher.store.lifecycle import Claim
from schemas.hops import Hop
from schemas.inference import InferenceResult, Usage
from workers.jobs import (
    MAX_JOB_S,
    finished_job,
    job_bound,
    job_record,
    next_poll_at,
    submitted_at,
)
from workers.providers.errors import ProviderError
from workers.providers.fal import FalJob, FalPending

BASE = "https://queue.fal.run/fal-ai/flux/requests/req-1"
JOB = FalJob("fal-ai/flux/schnell", "req-1", f"{BASE}/status", BASE, f"{BASE}/cancel")


def _claim(deadline_at: datetime | None = None, job: dict[str, Any] | None = None) -> Claim:
    return Claim(
        run_id="run_1", tenant_id="ten_1", app="fal-ai/flux/schnell", input={},
        chain=[Hop(provider="fal", credential="byok:main")], hop_index=0, attempt=1, token="t",
        created_at=utcnow(), deadline_at=deadline_at, job=job,
    )  # fmt: skip


def _seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def test_a_job_is_polled_after_the_delay_it_asks_for() -> None:
    now = utcnow()
    assert next_poll_at(_claim(), FalPending(JOB, "IN_QUEUE", 3), now) == now + _seconds(2)
    polled_twice = FalPending(replace(JOB, polls=2), "IN_PROGRESS")
    assert next_poll_at(_claim(), polled_twice, now) == now + _seconds(4.5)


def test_a_job_is_never_polled_past_its_runs_deadline_and_is_given_up_there() -> None:
    now = utcnow()
    claim = _claim(deadline_at=now + _seconds(1))
    pending = FalPending(JOB, "IN_QUEUE")
    assert next_poll_at(claim, pending, now) == now + _seconds(1)
    assert next_poll_at(claim, pending, now + _seconds(1)) is None


def test_the_job_of_a_run_without_a_deadline_is_given_up_an_hour_after_its_submission() -> None:
    submitted = utcnow()
    pending = FalPending(JOB, "IN_PROGRESS")
    claim = _claim(job=job_record(pending, submitted))
    bound = submitted + _seconds(MAX_JOB_S)
    assert job_bound(claim, submitted) == bound and MAX_JOB_S == 3600
    assert next_poll_at(claim, pending, bound - _seconds(1)) == bound
    assert next_poll_at(claim, pending, bound) is None


def test_a_waiting_jobs_record_goes_through_json_and_gives_the_job_back() -> None:
    submitted = utcnow()
    record = json.loads(json.dumps(job_record(FalPending(JOB, "IN_QUEUE", 3), submitted)))
    assert FalJob.from_dict(record) == JOB
    assert (record["status"], record["queue_position"]) == ("IN_QUEUE", 3)
    assert submitted_at(record) == submitted


def test_an_attempt_keeps_its_jobs_handle_and_how_it_ended() -> None:
    record = job_record(FalPending(JOB, "IN_PROGRESS"), utcnow()) | {"next_poll_at": "soon"}
    done = finished_job(record, InferenceResult(output={}, usage=Usage(units=2)))
    assert done is not None and done["status"] == "COMPLETED"
    assert (done["request_id"], done["cancel_url"]) == ("req-1", f"{BASE}/cancel")
    assert "next_poll_at" not in done and "queue_position" not in done
    failed = finished_job(record, ProviderError("timeout", "not done in time"))
    assert failed is not None and failed["status"] == "FAILED"
    assert finished_job(None, ProviderError("timeout", "no job was ever submitted")) is None
