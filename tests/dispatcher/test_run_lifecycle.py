"""The run state machine in the store, on SQLite and (when configured) Postgres."""

import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, func, select

from dispatcher.db import utcnow
from dispatcher.models import Attempt, UsageEvent
from dispatcher.runviews import run_public
from dispatcher.store import lifecycle, runs, tenants
from dispatcher.store.lifecycle import AttemptRow, Claim, Fail, NextHop, Outcome, Succeed
from schemas.hops import Hop
from schemas.inference import Usage
from tests.support.statements import sqlite_plan, statements_run

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


def _new_run(engine: Engine, tenant_id: str, requeue_after_s: float = 600, **fields: Any) -> str:
    with Session(engine) as session:
        run = runs.create_run(
            session, tenant_id=tenant_id, app="simulated/echo", input={"prompt": "x"},
            chain=CHAIN, requeue_after_s=requeue_after_s, **fields,
        )  # fmt: skip
        session.commit()
        return run.id


def _claim(engine: Engine, run_id: str, hop: int = 0, lease_s: float = 30) -> Claim | None:
    with engine.begin() as connection:
        claims = lifecycle.claim_runs(connection, [(run_id, hop)], lease_s)
    assert len(claims) <= 1
    return claims[0] if claims else None


def _attempt(claim: Claim, outcome: str = "succeeded") -> AttemptRow:
    now = utcnow()
    return AttemptRow(
        run_id=claim.run_id, number=claim.attempt, hop=claim.hop_index, provider=claim.hop.provider,
        model=claim.hop.model, credential_kind=claim.hop.credential_kind,
        credential_name=claim.hop.credential_name, outcome=outcome, latency_ms=1.0,
        usage={"input_tokens": 3, "output_tokens": 4}, started_at=now, finished_at=now,
    )  # fmt: skip


def _record(
    engine: Engine, claim: Claim, decision: lifecycle.Decision, outcome: str = "succeeded"
) -> bool:
    with engine.begin() as connection:
        done = lifecycle.record(
            connection, [Outcome(claim, _attempt(claim, outcome), decision)], requeue_after_s=600
        )
    return done == [True]


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
    with engine.begin() as connection:
        taken = lifecycle.sweep(connection, requeue_after_s=600)
    assert sorted(taken) == sorted([(lapsed, 0, "simulated"), (lost, 0, "simulated")])
    with engine.begin() as connection:
        assert lifecycle.sweep(connection, requeue_after_s=600) == []
    assert _claim(engine, lapsed) is not None


def test_renewing_a_lease_keeps_the_run_from_the_sweeper(engine: Engine, tenant_id: str) -> None:
    run_id = _new_run(engine, tenant_id)
    claim = _claim(engine, run_id, lease_s=0.2)
    assert claim is not None
    with engine.begin() as connection:
        assert lifecycle.renew_leases(connection, {run_id: claim.token}, lease_s=30) == 1
        assert lifecycle.renew_leases(connection, {run_id: "not-the-token"}, lease_s=30) == 0
    time.sleep(0.3)
    with engine.begin() as connection:
        assert lifecycle.sweep(connection, requeue_after_s=600) == []


def test_leases_beyond_one_statement_are_all_renewed(
    engine: Engine, tenant_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process holding tens of thousands of calls renews them in several statements: one
    would pass the drivers' limit on parameters."""
    monkeypatch.setattr(lifecycle, "RENEW_CHUNK", 2)
    claims = [_claim(engine, _new_run(engine, tenant_id), lease_s=0.2) for _ in range(5)]
    held = {claim.run_id: claim.token for claim in claims if claim is not None}
    with engine.begin() as connection:
        assert lifecycle.renew_leases(connection, held | {"run_gone": "t"}, lease_s=30) == 5
    time.sleep(0.3)
    with engine.begin() as connection:
        assert lifecycle.sweep(connection, requeue_after_s=600) == []


def test_runs_list_newest_first_with_a_cursor_and_filters(engine: Engine, tenant_id: str) -> None:
    ids = []
    for _ in range(5):
        ids.append(_new_run(engine, tenant_id))
        time.sleep(0.002)  # ids order by their millisecond; within one, at random
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
    with engine.begin() as connection:
        poll_at = utcnow() + timedelta(seconds=poll_in_s)
        return lifecycle.park(connection, claim, JOB, poll_at, grace_s=grace_s)


def _claim_job(
    engine: Engine, run_id: str, lease_s: float = 30, grace_s: float = 30
) -> Claim | None:
    with engine.begin() as connection:
        return lifecycle.claim_job(connection, run_id, 0, lease_s, grace_s=grace_s)


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
    with engine.begin() as connection:
        return lifecycle.sweep_jobs(connection, grace_s)


def test_a_parked_run_is_never_claimed_or_swept_as_a_hop_again(
    engine: Engine, tenant_id: str
) -> None:
    """Claiming it at its hop would submit its job a second time."""
    run_id = _new_run(engine, tenant_id)
    claim = _claim(engine, run_id, lease_s=0.05)
    assert claim is not None and _park(engine, claim, poll_in_s=0.0, grace_s=0.05)
    time.sleep(0.1)
    assert _claim(engine, run_id) is None
    with engine.begin() as connection:
        assert lifecycle.sweep(connection, requeue_after_s=600) == []
    with Session(engine) as session:
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
    with engine.begin() as connection:
        assert not lifecycle.park(connection, dead, JOB, utcnow(), grace_s=30)
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
    with engine.begin() as connection:
        dropped = lifecycle.drop_canceled_job(connection, run_id)
        assert lifecycle.drop_canceled_job(connection, run_id) is None
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
    with engine.begin() as connection:
        assert lifecycle.drop_canceled_job(connection, run_id) is None


# -- batches: many claims in one statement, many outcomes in one transaction -------------------


def _record_all(engine: Engine, outcomes: list[Outcome]) -> list[bool]:
    with engine.begin() as connection:
        return lifecycle.record(connection, outcomes, requeue_after_s=600)


def _status(engine: Engine, tenant_id: str, run_id: str) -> tuple[str, int]:
    with Session(engine) as session:
        run = runs.get_run(session, tenant_id, run_id)
        assert run is not None
        return run.status, run.hop_index


def test_a_batch_claims_each_run_once_at_its_own_hop(engine: Engine, tenant_id: str) -> None:
    first, second, moved = (_new_run(engine, tenant_id) for _ in range(3))
    claim = _claim(engine, moved)
    assert claim is not None and _record(engine, claim, NextHop(1, "openai"), outcome="failed")
    keys = [(first, 0), (second, 0), (moved, 0), (moved, 1), (first, 0), ("run_none", 0)]
    with engine.begin() as connection:
        claims = lifecycle.claim_runs(connection, keys, lease_s=30)
    assert sorted((c.run_id, c.hop_index, c.attempt) for c in claims) == sorted(
        [(first, 0, 1), (second, 0, 1), (moved, 1, 2)]
    )
    assert claims[0].input == {"prompt": "x"} and claims[0].chain == CHAIN
    with engine.begin() as connection:
        assert lifecycle.claim_runs(connection, keys, lease_s=30) == []


def test_a_batch_records_only_the_outcomes_whose_claims_still_hold(
    engine: Engine, tenant_id: str
) -> None:
    done, lost, canceled = (_new_run(engine, tenant_id) for _ in range(3))
    claims = {run_id: _claim(engine, run_id, lease_s=0.05) for run_id in (done, lost, canceled)}
    time.sleep(0.1)
    fresh = _claim(engine, lost)  # the lease lapsed and another worker took the run
    assert fresh is not None and _cancel(engine, tenant_id, canceled) == ("canceled", True)
    outcomes = [
        Outcome(claim, _attempt(claim), Succeed({"text": "x"}, Usage(output_tokens=4)))
        for claim in claims.values()
        if claim is not None
    ]
    assert _record_all(engine, outcomes) == [True, False, False]
    assert [_count(engine, Attempt, r) for r in (done, lost, canceled)] == [1, 0, 0]
    assert [_count(engine, UsageEvent, r) for r in (done, lost, canceled)] == [1, 0, 0]
    assert _record(engine, fresh, Succeed({"text": "y"}, Usage()))
    assert _record_all(engine, outcomes) == [False, False, False]


def test_a_stale_and_a_live_claim_of_one_run_in_one_batch_record_the_live_one(
    engine: Engine, tenant_id: str
) -> None:
    run_id = _new_run(engine, tenant_id)
    stale = _claim(engine, run_id, lease_s=0.05)
    time.sleep(0.1)
    live = _claim(engine, run_id)
    assert stale is not None and live is not None
    outcomes = [
        Outcome(stale, _attempt(stale), Succeed({"text": "late"}, Usage())),
        Outcome(live, _attempt(live), Succeed({"text": "on time"}, Usage())),
    ]
    assert _record_all(engine, outcomes) == [False, True]
    with Session(engine) as session:
        run = runs.get_run(session, tenant_id, run_id)
        assert run is not None and run.output == {"text": "on time"}
        attempts = runs.attempts_of(session, [run_id])[run_id]
        assert [a.number for a in attempts] == [2]


def test_a_batch_moves_each_run_as_its_own_decision_says(engine: Engine, tenant_id: str) -> None:
    ok, onward, failed = (_new_run(engine, tenant_id) for _ in range(3))
    claims = [_claim(engine, run_id) for run_id in (ok, onward, failed)]
    assert all(claims)
    decisions: list[lifecycle.Decision] = [
        Succeed({"text": "x"}, Usage(input_tokens=3)),
        NextHop(1, "openai", delay_s=5),
        Fail("invalid_request", "bad", 400),
    ]
    outcomes = [
        Outcome(c, _attempt(c, "succeeded" if i == 0 else "failed"), d)
        for i, (c, d) in enumerate(zip(claims, decisions, strict=True))
        if c is not None
    ]
    assert _record_all(engine, outcomes) == [True, True, True]
    assert _status(engine, tenant_id, ok) == ("succeeded", 0)
    assert _status(engine, tenant_id, onward) == ("queued", 1)
    assert _status(engine, tenant_id, failed) == ("failed", 0)
    with Session(engine) as session:
        run = runs.get_run(session, tenant_id, onward)
        assert run is not None and run.claim_token is None and run.lease_expires_at is not None
        assert run.lease_expires_at > utcnow() + timedelta(seconds=600)
    assert _claim(engine, onward, hop=1) is not None


def test_a_released_claim_writes_no_attempt_and_gives_the_attempt_back(
    engine: Engine, tenant_id: str
) -> None:
    run_id = _new_run(engine, tenant_id)
    claim = _claim(engine, run_id)
    assert claim is not None and claim.attempt == 1
    with engine.begin() as connection:
        decision = NextHop(1, "openai")
        assert lifecycle.release(connection, claim, decision, requeue_after_s=600)
        assert not lifecycle.release(connection, claim, decision, requeue_after_s=600)
    assert _count(engine, Attempt, run_id) == 0
    again = _claim(engine, run_id, hop=1)
    assert again is not None and again.attempt == 1


def test_an_input_with_integers_beyond_64_bits_is_stored_and_claimed_whole(
    engine: Engine, tenant_id: str
) -> None:
    """The store's JSON columns are written by orjson, which refuses such integers: they go
    through the standard library instead, unchanged."""
    big = {"prompt": "x", "n": 2**70 + 1, "nested": [-(2**65) - 3, 1.5, "é"]}  # no float holds them
    with Session(engine) as session:
        run = runs.create_run(
            session, tenant_id=tenant_id, app="simulated/echo", input=big, chain=CHAIN,
            requeue_after_s=600,
        )  # fmt: skip
        session.commit()
    claim = _claim(engine, run.id)
    assert claim is not None and claim.input == big


def _shown(engine: Engine, tenant_id: str, run_id: str) -> dict[str, Any]:
    """The run as ``GET /v1/runs/{id}`` shows it, read from the store."""
    with Session(engine) as session:
        run = runs.get_run(session, tenant_id, run_id)
        assert run is not None
        return run_public(run, runs.attempts_of(session, [run_id])[run_id]).model_dump(mode="json")


@pytest.mark.parametrize(
    "decision",
    [
        Succeed(output={"text": "hi", "parts": [1, 2.5, None]}, usage=Usage(input_tokens=3)),
        Fail(code="provider_error", message="the provider failed", status_code=503),
    ],
)
def test_a_run_ended_at_its_only_attempt_is_told_whole_as_the_store_then_shows_it(
    engine: Engine, tenant_id: str, decision: lifecycle.Decision
) -> None:
    """What a worker hands a waiting client with the terminal event is the body a read of the
    store gives once the outcome is committed, field for field."""
    run_id = _new_run(
        engine, tenant_id, meta={"team": "data"}, routing_version=3, policy="failover"
    )
    claimed = _claim(engine, run_id)
    assert claimed is not None
    claim = replace(claimed, waited=True)  # its message said a client waits
    outcome = Outcome(
        claim, _attempt(claim, "succeeded" if isinstance(decision, Succeed) else "failed"), decision
    )
    now = utcnow()
    with engine.begin() as connection:
        assert lifecycle.record(connection, [outcome], requeue_after_s=600, now=now) == [True]
    told = lifecycle.ended_run(outcome, now)
    assert told is not None
    assert told.model_dump(mode="json") == _shown(engine, tenant_id, run_id)
    assert told.metadata == {"team": "data"} and told.routing_version == 3
    nobody_waits = Outcome(claimed, outcome.attempt, decision)
    assert lifecycle.ended_run(nobody_waits, now) is None


def test_a_run_that_goes_on_or_had_earlier_attempts_is_not_told_whole(
    engine: Engine, tenant_id: str
) -> None:
    run_id = _new_run(engine, tenant_id)
    claimed = _claim(engine, run_id)
    assert claimed is not None
    first = replace(claimed, waited=True)
    moved = Outcome(first, _attempt(first, "failed"), NextHop(hop=1, provider="openai"))
    assert lifecycle.ended_run(moved, utcnow()) is None
    assert _record_all(engine, [moved]) == [True]
    taken = _claim(engine, run_id, hop=1)
    assert taken is not None and taken.attempt == 2
    second = replace(taken, waited=True)
    ended = Outcome(second, _attempt(second), Succeed(output={"text": "ok"}, usage=Usage()))
    assert lifecycle.ended_run(ended, utcnow()) is None  # its first attempt is only in the store


def test_claims_outcomes_and_renewals_find_their_runs_by_primary_key(
    engine: Engine, tenant_id: str
) -> None:
    """A batch of thousands of queued runs must not make every claim scan them: each
    statement that takes runs by (id, something) pairs searches the primary key."""
    if engine.dialect.name != "sqlite":
        pytest.skip("the plans checked are SQLite's")
    run_ids = [_new_run(engine, tenant_id) for _ in range(3)]
    with statements_run(engine, "UPDATE run") as statements:
        claim = _claim(engine, run_ids[0])
        assert claim is not None
        with engine.begin() as connection:
            lifecycle.renew_leases(connection, {claim.run_id: claim.token}, lease_s=30)
        assert _record(engine, claim, Succeed(output={"text": "ok"}, usage=Usage()))
    assert len(statements) >= 4  # the claim, the renewal, the mark and the move
    for statement, params in statements:
        plan = sqlite_plan(engine, statement, params)
        on_runs = [step for step in plan if " run " in f"{step} "]
        assert on_runs, (statement, plan)
        assert all("(id=?)" in step for step in on_runs), (statement, plan)
