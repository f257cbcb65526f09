"""The fallback decision: a pure function of the outcome, the claim and the chain.

It returns a value (``Succeed``, ``NextHop``, ``Fail``) that the executor records;
nothing here touches Redis or the store.
"""

from dispatcher.store.lifecycle import Claim, Decision, Fail, NextHop, Succeed
from schemas.errors import CREDENTIAL_CLASSES, NEXT_HOP_CLASSES
from schemas.inference import InferenceResult
from workers.providers.errors import ProviderError

MAX_ATTEMPTS = 6


def decide(claim: Claim, outcome: InferenceResult | ProviderError) -> Decision:
    if isinstance(outcome, InferenceResult):
        return Succeed(output=outcome.output, usage=outcome.usage)
    if not _moves_on(outcome, claim):
        return Fail(outcome.error_class, outcome.message, outcome.status_code)
    following = claim.hop_index + 1
    if following >= len(claim.chain) or claim.attempt >= MAX_ATTEMPTS:
        return Fail(
            "chain_exhausted",
            f"every hop failed; the last answered {outcome.error_class}: {outcome.message}",
            outcome.status_code,
        )
    return NextHop(hop=following, provider=claim.chain[following].provider)


def _moves_on(error: ProviderError, claim: Claim) -> bool:
    if error.error_class in NEXT_HOP_CLASSES:
        return True
    return error.error_class in CREDENTIAL_CLASSES and claim.hop.credential_kind == "byok"
