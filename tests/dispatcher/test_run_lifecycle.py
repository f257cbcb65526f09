"""The run state machine in the store, on SQLite and (when configured) Postgres."""

import time
from datetime import timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, func, select

from dispatcher.db import utcnow
from dispatcher.models import Attempt, UsageEvent
from dispatcher.store import lifecycle, runs, tenants
from dispatcher.store.lifecycle import Claim, Fail, NextHop, Succeed
from schemas.hops import Hop
from schemas.inference import Usage

CHAIN = [
    Hop(provider="simulated", model="echo"),
    Hop(provider="openai", model="gpt", credential="byok:k"),
]


@pytest.fixture
def tenant_id(engine: Engine) -> str:
    with Session(engine) as session:
        tenant = tenants.create_tenant(session, f"t-{time.monotonic_ns()}")
        session.commit()
        return tenant.id


def _new_run(engine: Engine, tenant_id: str, requeue_after_s: float = 600) -> str:
    with Session(engine) as session:
        run = runs.create_run(
            session, tenant_id=tenant_id, app="simulated/echo", input={"prompt": "x"},
            chain=CHAIN, requeue_after_s=requeue_after_s,
        )  # fmt: skip
        session.commit()
        return run.id


def _claim(engine: Engine, run_id: str, hop: int = 0, lease_s: float = 30) -> Claim | None:
    with Session(engine) as session:
        claim = lifecycle.claim_run(session, run_id, hop, lease_s)
        session.commit()
        return claim


def _attempt(claim: Claim, outcome: str = "succeeded") -> Attempt:
    now = utcnow()
    return Attempt(
        run_id=claim.run_id, number=claim.attempt, hop=claim.hop_index, provider=claim.hop.provider,
        credential_kind=claim.hop.credential_kind, outcome=outcome, latency_ms=1.0,
        usage={"input_tokens": 3, "output_tokens": 4}, started_at=now, finished_at=now,
    )  # fmt: skip


def _record(
    engine: Engine, claim: Claim, decision: lifecycle.Decision, outcome: str = "succeeded"
) -> bool:
    with Session(engine) as session:
        done = lifecycle.record(
            session, claim, _attempt(claim, outcome), decision, requeue_after_s=600
        )
        session.commit()
        return done


def _count(engine: Engine, model: type, run_id: str) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).where(col(model.run_id) == run_id)).one()  # type: ignore[attr-defined]


def test_a_run_is_claimed_once_and_a_duplicate_message_claims_nothing(
    engine: Engine, tenant_id: str
) -> None:
    run_id = _new_run(engine, tenant_id)
    first = _claim(engine, run_id)
    assert first is not None
    assert (first.attempt, first.hop.provider, first.input) == (1, "simulated", {"prompt": "x"})
    assert _claim(engine, run_id) is None


def test_a_message_for_another_hop_claims_nothing(engine: Engine, tenant_id: str) -> None:
    assert _claim(engine, _new_run(engine, tenant_id), hop=1) is None


def test_a_lapsed_lease_can_be_claimed_again_and_the_old_claim_records_nothing(
    engine: Engine, tenant_id: str
) -> None:
    run_id = _new_run(engine, tenant_id)
    stale = _claim(engine, run_id, lease_s=0.05)
    assert stale is not None
    time.sleep(0.1)
    fresh = _claim(engine, run_id)
    assert fresh is not None and fresh.attempt == 2
    assert not _record(engine, stale, Succeed({"text": "late"}, Usage()))
    assert _record(engine, fresh, Succeed({"text": "on time"}, Usage(input_tokens=3)))
    with Session(engine) as session:
        run = runs.get_run(session, tenant_id, run_id)
        assert run is not None and run.status == "succeeded" and run.output == {"text": "on time"}


def test_success_is_recorded_once_with_one_attempt_and_one_usage_event(
    engine: Engine, tenant_id: str
) -> None:
    run_id = _new_run(engine, tenant_id)
    claim = _claim(engine, run_id)
    assert claim is not None
    assert _record(engine, claim, Succeed({"text": "x"}, Usage(input_tokens=3, output_tokens=4)))
    assert not _record(engine, claim, Succeed({"text": "x"}, Usage()))
    assert _count(engine, Attempt, run_id) == 1
    assert _count(engine, UsageEvent, run_id) == 1
    with Session(engine) as session:
        run = runs.get_run(session, tenant_id, run_id)
        assert run is not None
        assert (run.status, run.provider, run.credential_kind) == (
            "succeeded",
            "simulated",
            "shared",
        )
        assert run.usage is not None and run.usage["output_tokens"] == 4
        assert run.finished_at is not None and run.claim_token is None


def test_next_hop_requeues_the_run_at_that_hop_only(engine: Engine, tenant_id: str) -> None:
    run_id = _new_run(engine, tenant_id)
    claim = _claim(engine, run_id)
    assert claim is not None
    assert _record(engine, claim, NextHop(hop=1, provider="openai"), outcome="failed")
    assert _claim(engine, run_id, hop=0) is None
    second = _claim(engine, run_id, hop=1)
    assert second is not None and second.hop.credential_name == "k" and second.attempt == 2


def test_fail_records_the_error_and_ends_the_run(engine: Engine, tenant_id: str) -> None:
    run_id = _new_run(engine, tenant_id)
    claim = _claim(engine, run_id)
    assert claim is not None
    assert _record(engine, claim, Fail("invalid_request", "bad prompt", 400), outcome="failed")
    with Session(engine) as session:
        run = runs.get_run(session, tenant_id, run_id)
        assert run is not None and run.status == "failed"
        assert run.error == {
            "code": "invalid_request",
            "message": "bad prompt",
            "provider": "simulated",
            "status_code": 400,
        }
    assert _claim(engine, run_id) is None


def test_the_sweeper_takes_back_lapsed_and_lost_runs_once(engine: Engine, tenant_id: str) -> None:
    lapsed = _new_run(engine, tenant_id)
    assert _claim(engine, lapsed, lease_s=0.05) is not None
    lost = _new_run(engine, tenant_id, requeue_after_s=0.05)
    fine = _new_run(engine, tenant_id)
    assert _claim(engine, fine) is not None
    time.sleep(0.1)
    with Session(engine) as session:
        taken = lifecycle.sweep(session, requeue_after_s=600)
        session.commit()
    assert sorted(taken) == sorted([(lapsed, 0, "simulated"), (lost, 0, "simulated")])
    with Session(engine) as session:
        assert lifecycle.sweep(session, requeue_after_s=600) == []
    assert _claim(engine, lapsed) is not None


def test_renewing_a_lease_keeps_the_run_from_the_sweeper(engine: Engine, tenant_id: str) -> None:
    run_id = _new_run(engine, tenant_id)
    claim = _claim(engine, run_id, lease_s=0.2)
    assert claim is not None
    with Session(engine) as session:
        assert lifecycle.renew_leases(session, {run_id: claim.token}, lease_s=30) == 1
        assert lifecycle.renew_leases(session, {run_id: "not-the-token"}, lease_s=30) == 0
        session.commit()
    time.sleep(0.3)
    with Session(engine) as session:
        assert lifecycle.sweep(session, requeue_after_s=600) == []


def test_runs_list_newest_first_with_a_cursor_and_filters(engine: Engine, tenant_id: str) -> None:
    ids = [_new_run(engine, tenant_id) for _ in range(5)]
    with Session(engine) as session:
        first = runs.list_runs(session, tenant_id, limit=2)
        rest = runs.list_runs(session, tenant_id, limit=10, cursor=first[-1].id)
        assert [r.id for r in first + rest] == ids[::-1]
        assert runs.list_runs(session, tenant_id, limit=10, status="succeeded") == []
        assert runs.list_runs(session, tenant_id, limit=10, app="other/app") == []
        assert runs.get_run(session, "ten_someone_else", ids[0]) is None


def test_a_canceled_queued_run_is_never_claimed(engine: Engine, tenant_id: str) -> None:
    run_id = _new_run(engine, tenant_id)
    with Session(engine) as session:
        assert lifecycle.cancel(session, "ten_other", run_id) == (None, False)
        assert lifecycle.cancel(session, tenant_id, run_id) == ("canceled", True)
        session.commit()
    assert _claim(engine, run_id) is None


def test_a_canceled_running_run_discards_its_result_and_a_finished_one_says_its_status(
    engine: Engine, tenant_id: str
) -> None:
    run_id = _new_run(engine, tenant_id)
    claim = _claim(engine, run_id)
    assert claim is not None
    with Session(engine) as session:
        assert lifecycle.cancel(session, tenant_id, run_id) == ("canceled", True)
        session.commit()
    assert not _record(engine, claim, Succeed({"text": "too late"}, Usage()))
    assert _count(engine, UsageEvent, run_id) == 0
    with Session(engine) as session:
        assert lifecycle.cancel(session, tenant_id, run_id) == ("canceled", False)
        run = runs.get_run(session, tenant_id, run_id)
        assert run is not None and run.output is None
    done = _new_run(engine, tenant_id)
    finished = _claim(engine, done)
    assert finished is not None and _record(engine, finished, Succeed({}, Usage()))
    with Session(engine) as session:
        assert lifecycle.cancel(session, tenant_id, done) == ("succeeded", False)


JOB = {"app": "fal-ai/flux/schnell", "request_id": "req-1", "status": "IN_QUEUE", "polls": 0}


def _park(engine: Engine, claim: Claim, poll_in_s: float, grace_s: float = 30) -> bool:
    with Session(engine) as session:
        poll_at = utcnow() + timedelta(seconds=poll_in_s)
        parked = lifecycle.park(session, claim, JOB, poll_at, grace_s=grace_s)
        session.commit()
        return parked


def _claim_job(
    engine: Engine, run_id: str, lease_s: float = 30, grace_s: float = 30
) -> Claim | None:
    with Session(engine) as session:
        claim = lifecycle.claim_job(session, run_id, 0, lease_s, grace_s=grace_s)
        session.commit()
        return claim


def _parked_run(engine: Engine, tenant_id: str, poll_in_s: float, grace_s: float = 30) -> str:
    run_id = _new_run(engine, tenant_id)
    claim = _claim(engine, run_id)
    assert claim is not None and _park(engine, claim, poll_in_s, grace_s)
    return run_id


def _cancel(
    engine: Engine, tenant_id: str, run_id: str, grace_s: float = 30
) -> tuple[str | None, bool]:
    with Session(engine) as session:
        answer = lifecycle.cancel(session, tenant_id, run_id, grace_s=grace_s)
        session.commit()
        return answer


def _sweep_jobs(engine: Engine, grace_s: float = 30) -> list[tuple[str, int, str]]:
    with Session(engine) as session:
        taken = lifecycle.sweep_jobs(session, grace_s)
        session.commit()
        return taken


def test_a_parked_run_is_never_claimed_or_swept_as_a_hop_again(
    engine: Engine, tenant_id: str
) -> None:
    """Claiming it at its hop would submit its job a second time."""
    run_id = _new_run(engine, tenant_id)
    claim = _claim(engine, run_id, lease_s=0.05)
    assert claim is not None and _park(engine, claim, poll_in_s=0.0, grace_s=0.05)
    time.sleep(0.1)
    assert _claim(engine, run_id) is None
    with Session(engine) as session:
        assert lifecycle.sweep(session, requeue_after_s=600) == []
        run = runs.get_run(session, tenant_id, run_id)
        assert run is not None and (run.status, run.claim_token, run.pending_job) == (
            "running", None, JOB,
        )  # fmt: skip


def test_a_parked_run_is_polled_only_when_its_poll_is_due_and_by_one_poller(
    engine: Engine, tenant_id: str
) -> None:
    later = _parked_run(engine, tenant_id, poll_in_s=5)
    assert _claim_job(engine, later) is None  # an early duplicate message polls nothing
    due = _parked_run(engine, tenant_id, poll_in_s=0)
    poller = _claim_job(engine, due)
    assert poller is not None and (poller.attempt, poller.job) == (1, JOB)
    assert _claim_job(engine, due) is None  # a poll is in flight


def test_a_polled_job_is_recorded_once_as_the_attempt_it_belongs_to(
    engine: Engine, tenant_id: str
) -> None:
    run_id = _parked_run(engine, tenant_id, poll_in_s=0)
    poller = _claim_job(engine, run_id)
    assert poller is not None
    assert _record(engine, poller, Succeed({"images": []}, Usage(units=2)))
    assert not _record(engine, poller, Succeed({"images": []}, Usage(units=2)))
    assert (_count(engine, Attempt, run_id), _count(engine, UsageEvent, run_id)) == (1, 1)
    with Session(engine) as session:
        run = runs.get_run(session, tenant_id, run_id)
        assert run is not None and (run.status, run.pending_job) == ("succeeded", None)
    assert _claim_job(engine, run_id) is None


def test_a_dead_pollers_job_is_polled_again_and_its_late_answer_records_nothing(
    engine: Engine, tenant_id: str
) -> None:
    run_id = _parked_run(engine, tenant_id, poll_in_s=0)
    dead = _claim_job(engine, run_id, lease_s=0.05)
    assert dead is not None
    time.sleep(0.1)
    alive = _claim_job(engine, run_id)
    assert alive is not None and alive.token != dead.token
    with Session(engine) as session:
        assert not lifecycle.park(session, dead, JOB, utcnow(), grace_s=30)
    assert not _record(engine, dead, Succeed({}, Usage()))
    assert _record(engine, alive, Succeed({}, Usage()))


def test_an_overdue_poll_is_sent_again_by_one_sweep(engine: Engine, tenant_id: str) -> None:
    overdue = _parked_run(engine, tenant_id, poll_in_s=-1, grace_s=0.05)
    _parked_run(engine, tenant_id, poll_in_s=60)
    assert _sweep_jobs(engine) == [(overdue, 0, "simulated")]
    assert _sweep_jobs(engine) == []
    assert _claim_job(engine, overdue) is not None  # the sweep made its poll due at once


def test_a_canceled_parked_run_gives_up_its_job_once_and_is_never_polled(
    engine: Engine, tenant_id: str
) -> None:
    run_id = _parked_run(engine, tenant_id, poll_in_s=0)
    assert _cancel(engine, tenant_id, run_id, grace_s=0.05) == ("canceled", True)
    assert _claim_job(engine, run_id) is None
    time.sleep(0.1)
    # The cancel's poll message was lost: the sweeper sends one.
    assert _sweep_jobs(engine) == [(run_id, 0, "simulated")]
    with Session(engine) as session:
        dropped = lifecycle.drop_canceled_job(session, run_id)
        assert lifecycle.drop_canceled_job(session, run_id) is None
        session.commit()
    assert dropped is not None
    assert (dropped.tenant_id, dropped.hop.provider, dropped.job) == (tenant_id, "simulated", JOB)
    assert _sweep_jobs(engine, grace_s=0) == []


def test_a_run_canceled_while_its_job_was_submitted_cannot_park_it(
    engine: Engine, tenant_id: str
) -> None:
    run_id = _new_run(engine, tenant_id)
    claim = _claim(engine, run_id)
    assert claim is not None and _cancel(engine, tenant_id, run_id) == ("canceled", True)
    assert not _park(engine, claim, poll_in_s=2)
    with Session(engine) as session:
        assert lifecycle.drop_canceled_job(session, run_id) is None
