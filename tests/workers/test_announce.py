"""Which run events an attempt's outcome announces."""

from datetime import UTC, datetime

from dispatcher.store.lifecycle import AttemptRow, Claim, Fail, NextHop, Succeed
from schemas.hops import Hop
from schemas.inference import Usage
from workers.announce import Outbox, outcome_events, running

NOW = datetime.now(UTC)
CLAIM = Claim(
    run_id="run_1", tenant_id="ten_1", app="a/b", input={}, hop_index=0, attempt=1, token="t",
    chain=[Hop(provider="openai", credential="byok:k"), Hop(provider="simulated")], created_at=NOW,
)  # fmt: skip


def _attempt(outcome: str, error_class: str | None = None) -> AttemptRow:
    return AttemptRow(
        run_id="run_1", number=1, hop=0, provider="openai", model=None, credential_kind="byok",
        credential_name="k", outcome=outcome, error_class=error_class,
        status_code=429 if error_class else 200, latency_ms=1, started_at=NOW, finished_at=NOW,
    )  # fmt: skip


def test_a_claim_announces_running() -> None:
    assert running(CLAIM) == ("running", {"attempt": 1, "hop": 0, "provider": "openai"})


def test_success_announces_succeeded_with_who_served_it() -> None:
    events = outcome_events(CLAIM, _attempt("succeeded"), Succeed({}, Usage()))
    assert events == [("succeeded", {"provider": "openai", "credential_kind": "byok"})]


def test_a_failure_that_moves_on_announces_the_failure_then_the_fallback() -> None:
    events = outcome_events(
        CLAIM, _attempt("failed", "rate_limited"), NextHop(hop=1, provider="simulated")
    )
    assert [event for event, _ in events] == ["attempt_failed", "fell_back"]
    assert events[0][1]["error_class"] == "rate_limited"
    assert events[1][1] == {"from_hop": 0, "to_hop": 1, "provider": "simulated"}


def test_waiting_on_the_same_hop_announces_waiting_only() -> None:
    events = outcome_events(
        CLAIM, _attempt("failed", "rate_limited"), NextHop(hop=0, provider="openai", delay_s=2)
    )
    assert [event for event, _ in events] == ["attempt_failed", "waiting"]


def test_a_final_failure_announces_failed_with_its_code() -> None:
    events = outcome_events(
        CLAIM, _attempt("failed", "invalid_request"), Fail("invalid_request", "bad")
    )
    assert events[-1] == ("failed", {"code": "invalid_request", "message": "bad"})


def test_an_outbox_counts_each_attempt_with_the_status_its_run_ended_in() -> None:
    outbox = Outbox()
    failed = _attempt("failed", "rate_limited")
    outbox.move(CLAIM, NextHop(hop=1, provider="simulated"), failed)
    outbox.move(CLAIM, Succeed({}, Usage()), _attempt("succeeded"))
    assert outbox.attempts == [(failed, None), (outbox.attempts[1][0], "succeeded")]
    assert outbox.hops == [("run_1", NextHop(hop=1, provider="simulated"))]
    assert [event.type for event in outbox.events] == ["attempt_failed", "fell_back", "succeeded"]


def test_a_run_ended_without_an_attempt_is_counted_as_ended() -> None:
    outbox = Outbox()
    outbox.move(CLAIM, Fail("deadline_exceeded", "every hop is cooling down"), None)
    outbox.move(CLAIM, NextHop(hop=1, provider="simulated"), None)
    assert (outbox.attempts, outbox.ended) == ([], ["failed"])
    assert [event.type for event in outbox.events] == ["failed", "fell_back"]
