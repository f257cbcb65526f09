"""The fallback decision, called without Redis or a store."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dispatcher.store.lifecycle import Claim, Fail, NextHop, Succeed
from schemas.hops import Hop
from schemas.inference import InferenceResult, Usage
from workers.fallback import MAX_ATTEMPTS, MAX_WAIT_S, WAIT_MARGIN_S, decide, skip
from workers.providers.errors import ProviderError

CHAIN = [
    Hop(provider="openai", credential="byok:mine"),
    Hop(provider="anthropic", credential="byok:theirs"),
    Hop(provider="simulated"),
]


def _claim(hop: int = 0, attempt: int = 1) -> Claim:
    return Claim(
        run_id="run_1", tenant_id="ten_1", app="a/b", input={}, chain=CHAIN, hop_index=hop,
        attempt=attempt, token="t", created_at=datetime.now(UTC),
    )  # fmt: skip


def test_a_result_succeeds() -> None:
    result = InferenceResult(output={"text": "ok"}, usage=Usage(input_tokens=1))
    assert decide(_claim(), result) == Succeed({"text": "ok"}, Usage(input_tokens=1))


@pytest.mark.parametrize(
    "error_class", ["rate_limited", "overloaded", "provider_error", "timeout", "connection_error"]
)
def test_transient_failures_move_to_the_next_hop(error_class: str) -> None:
    assert decide(_claim(), ProviderError(error_class, "x")) == NextHop(hop=1, provider="anthropic")  # type: ignore[arg-type]


@pytest.mark.parametrize("error_class", ["quota_exhausted", "auth_failed"])
def test_credential_failures_move_on_from_a_byok_hop(error_class: str) -> None:
    assert decide(_claim(), ProviderError(error_class, "x")) == NextHop(hop=1, provider="anthropic")  # type: ignore[arg-type]


def test_a_credential_failure_on_the_shared_hop_fails() -> None:
    decision = decide(
        _claim(hop=2), ProviderError("auth_failed", "platform key broken", status_code=401)
    )
    assert decision == Fail("auth_failed", "platform key broken", 401)


def test_an_invalid_request_fails_at_once_with_the_providers_message() -> None:
    decision = decide(
        _claim(), ProviderError("invalid_request", "max_tokens too large", status_code=400)
    )
    assert decision == Fail("invalid_request", "max_tokens too large", 400)


def test_the_last_hop_failing_exhausts_the_chain() -> None:
    decision = decide(_claim(hop=2), ProviderError("overloaded", "busy", status_code=503))
    assert (
        isinstance(decision, Fail)
        and decision.code == "chain_exhausted"
        and "busy" in decision.message
    )


def test_attempts_are_bounded() -> None:
    decision = decide(
        _claim(hop=0, attempt=MAX_ATTEMPTS), ProviderError("rate_limited", "slow down")
    )
    assert isinstance(decision, Fail) and decision.code == "chain_exhausted"


# The run's own bounds: max_attempts and deadline over the whole chain, and byok_only.

BYOK_CHAIN = CHAIN[:2]
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _bounded(hop: int = 0, attempt: int = 1, **bounds: Any) -> Claim:
    return replace(_claim(hop, attempt), **bounds)


def test_the_runs_own_max_attempts_bounds_it() -> None:
    busy = ProviderError("overloaded", "busy")
    assert decide(_bounded(attempt=1, max_attempts=2), busy) == NextHop(hop=1, provider="anthropic")
    decision = decide(_bounded(hop=1, attempt=2, max_attempts=2), busy)
    assert isinstance(decision, Fail) and decision.code == "chain_exhausted"
    assert "spent its 2 attempts" in decision.message and "busy" in decision.message


def test_a_transient_failure_past_the_deadline_fails_with_deadline_exceeded() -> None:
    claim = _bounded(deadline_at=T0)
    decision = decide(claim, ProviderError("rate_limited", "slow down", status_code=429), now=T0)
    assert isinstance(decision, Fail) and decision.code == "deadline_exceeded"
    assert decision.status_code == 429 and "slow down" in decision.message


def test_before_the_deadline_the_run_moves_on() -> None:
    claim = _bounded(deadline_at=T0)
    decision = decide(claim, ProviderError("timeout", "late"), now=T0 - timedelta(seconds=1))
    assert decision == NextHop(hop=1, provider="anthropic")


def test_a_result_past_the_deadline_still_succeeds() -> None:
    result = InferenceResult(output={"text": "ok"}, usage=Usage())
    assert isinstance(
        decide(_bounded(deadline_at=T0), result, now=T0 + timedelta(hours=1)), Succeed
    )


def test_byok_only_running_out_of_hops_fails_with_byok_exhausted() -> None:
    claim = _bounded(hop=1, chain=BYOK_CHAIN, policy="byok_only")
    decision = decide(claim, ProviderError("quota_exhausted", "no credit", status_code=429))
    assert isinstance(decision, Fail) and decision.code == "byok_exhausted"
    assert "byok_only" in decision.message and "no credit" in decision.message


def test_byok_only_running_out_of_attempts_fails_with_byok_exhausted() -> None:
    claim = _bounded(chain=BYOK_CHAIN, policy="byok_only", max_attempts=1)
    decision = decide(claim, ProviderError("overloaded", "busy"))
    assert isinstance(decision, Fail) and decision.code == "byok_exhausted"


def test_byok_first_running_out_of_hops_is_chain_exhausted() -> None:
    claim = _bounded(hop=1, chain=BYOK_CHAIN, policy="byok_first")
    decision = decide(claim, ProviderError("overloaded", "busy"))
    assert isinstance(decision, Fail) and decision.code == "chain_exhausted"


def test_byok_only_still_fails_an_invalid_request_with_the_providers_message() -> None:
    claim = _bounded(chain=BYOK_CHAIN, policy="byok_only")
    decision = decide(claim, ProviderError("invalid_request", "bad prompt", status_code=400))
    assert decision == Fail("invalid_request", "bad prompt", 400)


# Cooling hops: passed over without an attempt; when all that are left cool, a wait.

LONG = [*CHAIN, Hop(provider="openai", credential="byok:spare")]
SLOW_DOWN = ProviderError("rate_limited", "slow down", status_code=429, retry_after_s=30)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _long(hop: int = 0, **bounds: Any) -> Claim:
    return _bounded(hop, chain=LONG, created_at=T0, **bounds)


def test_a_failure_passes_over_the_hops_cooling_down() -> None:
    cooling = [None, _at(30), _at(10), None]
    assert decide(_long(), SLOW_DOWN, cooling, now=T0) == NextHop(hop=3, provider="openai")


def test_a_cooldown_that_has_ended_is_no_cooldown() -> None:
    cooling = [None, _at(-1), None, None]
    assert decide(_long(), SLOW_DOWN, cooling, now=T0) == NextHop(hop=1, provider="anthropic")


def test_the_run_never_goes_back_to_a_hop_before_it() -> None:
    """Hop 0 resets first, but the run is past it: it waits for the first hop ahead."""
    cooling = [_at(1), None, _at(20), _at(10)]
    decision = decide(_long(hop=1), SLOW_DOWN, cooling, now=T0)
    assert decision == NextHop(hop=3, provider="openai", delay_s=10 + WAIT_MARGIN_S)


def test_when_every_hop_left_cools_the_run_waits_for_the_first_reset() -> None:
    cooling = [None, _at(20), _at(5), _at(60)]
    decision = decide(_long(), SLOW_DOWN, cooling, now=T0)
    assert decision == NextHop(hop=2, provider="simulated", delay_s=5 + WAIT_MARGIN_S)


def test_a_wait_that_would_end_past_the_deadline_fails_with_deadline_exceeded() -> None:
    cooling = [None, _at(20), _at(5), _at(60)]
    decision = decide(_long(deadline_at=_at(4)), SLOW_DOWN, cooling, now=T0)
    assert isinstance(decision, Fail) and decision.code == "deadline_exceeded"
    assert decision.status_code == 429
    assert _at(5).isoformat() in decision.message and "slow down" in decision.message
    within = decide(_long(deadline_at=_at(6)), SLOW_DOWN, cooling, now=T0)
    assert within == NextHop(hop=2, provider="simulated", delay_s=5 + WAIT_MARGIN_S)


def test_a_run_without_a_deadline_waits_no_later_than_a_bound_after_submission() -> None:
    late = [None, *[_at(MAX_WAIT_S + 1)] * 3]
    decision = decide(_long(), SLOW_DOWN, late, now=T0)
    assert isinstance(decision, Fail) and decision.code == "deadline_exceeded"


def test_max_attempts_still_bounds_a_run_whose_hops_cool() -> None:
    cooling = [None, _at(5), _at(5), _at(5)]
    decision = decide(_long(attempt=2, max_attempts=2), SLOW_DOWN, cooling, now=T0)
    assert isinstance(decision, Fail) and decision.code == "chain_exhausted"


def test_byok_only_still_ends_byok_exhausted_with_cooling_knowledge() -> None:
    claim = _bounded(hop=1, chain=BYOK_CHAIN, policy="byok_only")
    decision = decide(claim, SLOW_DOWN, [_at(1), _at(1)], now=T0)
    assert isinstance(decision, Fail) and decision.code == "byok_exhausted"


def test_an_invalid_request_fails_whatever_cools() -> None:
    refused = ProviderError("invalid_request", "bad prompt", status_code=400)
    assert decide(_long(), refused, [None, _at(5), None, None], now=T0) == Fail(
        "invalid_request", "bad prompt", 400
    )


def test_a_claimed_hop_cooling_down_is_passed_over_to_the_next_that_is_not() -> None:
    cooling = [_at(5), _at(5), None, None]
    assert skip(_long(), cooling, now=T0) == NextHop(hop=2, provider="simulated")


def test_a_claimed_hop_whose_whole_chain_cools_waits_for_the_first_reset() -> None:
    """The claimed hop itself counts: it has not been tried, and may reset first."""
    cooling = [_at(3), _at(9), _at(4), _at(5)]
    assert skip(_long(), cooling, now=T0) == NextHop(
        hop=0, provider="openai", delay_s=3 + WAIT_MARGIN_S
    )
    assert skip(_long(hop=1), cooling, now=T0) == NextHop(
        hop=2, provider="simulated", delay_s=4 + WAIT_MARGIN_S
    )


def test_a_claimed_hop_that_cools_past_the_deadline_fails_without_an_attempt() -> None:
    decision = skip(_long(hop=3, deadline_at=_at(10)), [None, None, None, _at(30)], now=T0)
    assert isinstance(decision, Fail) and decision.code == "deadline_exceeded"
    assert decision.status_code is None
    assert "cooling down until " + _at(30).isoformat() in decision.message


def test_a_claim_past_the_deadline_fails_with_deadline_exceeded() -> None:
    decision = skip(_long(deadline_at=_at(-1)), [_at(5), None, None, None], now=T0)
    assert isinstance(decision, Fail) and decision.code == "deadline_exceeded"
