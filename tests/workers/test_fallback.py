"""The fallback decision, called without Redis or a store."""

from datetime import UTC, datetime

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
