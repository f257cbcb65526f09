"""The fallback decision, called without Redis or a store."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dispatcher.store.lifecycle import Claim, Fail, NextHop, Succeed
from schemas.hops import Hop
from schemas.inference import InferenceResult, Usage
from workers.fallback import MAX_ATTEMPTS, decide
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
