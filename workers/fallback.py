"""The fallback decision: a pure function of the outcome, the claim and the chain.

It returns a value (``Succeed``, ``NextHop``, ``Fail``) that the executor records;
nothing here touches Redis or the store. A run moves on within its bounds: its chain, its
``max_attempts`` and its ``deadline_at``; a ``byok_only`` run that runs out fails with
``byok_exhausted``, never reaching the shared pool.
"""

from datetime import datetime

from dispatcher.db import utcnow
from dispatcher.store.lifecycle import Claim, Decision, Fail, NextHop, Succeed
from schemas.errors import CREDENTIAL_CLASSES, NEXT_HOP_CLASSES
from schemas.inference import InferenceResult
from schemas.routing import DEFAULT_MAX_ATTEMPTS
from workers.providers.errors import ProviderError

MAX_ATTEMPTS = DEFAULT_MAX_ATTEMPTS


def decide(
    claim: Claim, outcome: InferenceResult | ProviderError, now: datetime | None = None
) -> Decision:
    if isinstance(outcome, InferenceResult):
        return Succeed(output=outcome.output, usage=outcome.usage)
    if not _moves_on(outcome, claim):
        return Fail(outcome.error_class, outcome.message, outcome.status_code)
    last = f"the last answered {outcome.error_class}: {outcome.message}"
    following = claim.hop_index + 1
    if following >= len(claim.chain) or claim.attempt >= claim.max_attempts:
        return _exhausted(claim, last, outcome.status_code)
    if claim.deadline_at is not None and (now or utcnow()) >= claim.deadline_at:
        message = f"the run's deadline passed at {claim.deadline_at.isoformat()}; {last}"
        return Fail("deadline_exceeded", message, outcome.status_code)
    return NextHop(hop=following, provider=claim.chain[following].provider)


def _exhausted(claim: Claim, last: str, status_code: int | None) -> Fail:
    spent = claim.hop_index + 1 >= len(claim.chain)
    why = "every hop failed" if spent else f"the run spent its {claim.max_attempts} attempts"
    if claim.policy == "byok_only":
        return Fail(
            "byok_exhausted", f"{why} (policy byok_only: no shared pool); {last}", status_code
        )
    return Fail("chain_exhausted", f"{why}; {last}", status_code)


def _moves_on(error: ProviderError, claim: Claim) -> bool:
    if error.error_class in NEXT_HOP_CLASSES:
        return True
    return error.error_class in CREDENTIAL_CLASSES and claim.hop.credential_kind == "byok"
