"""The fallback decision: pure functions of the outcome, the claim, the chain's cooling state
and the time.

They return a value (``Succeed``, ``NextHop``, ``Fail``) that the executor records; nothing
here touches Redis or the store.

- ``decide(claim, outcome, cooling, now)``: after an attempt.
- ``skip(claim, cooling, now)``: the claimed hop is cooling down (the run was queued for it
  before its cooldown began): where the run goes instead, without an attempt.

A run walks its chain forward, never back, within its bounds: its chain, ``max_attempts``
attempts (a skip is not one) and its ``deadline_at``. It passes over hops that are cooling
down (``dispatcher.routing.ahead``, the rule explain applies too). When every hop left is
cooling down, it waits for the one that resets first (a ``NextHop`` with a delay, sent as a
delayed message) if that is before its deadline, and fails with ``deadline_exceeded`` at once
if not. A run with no deadline waits until at most ``MAX_WAIT_S`` after its submission. A
``byok_only`` run that runs out fails with ``byok_exhausted``, never reaching the shared pool.
"""

from datetime import datetime, timedelta

from dispatcher.db import utcnow
from dispatcher.routing import Cooling, ahead, cooling_until
from dispatcher.store.lifecycle import Claim, Decision, Fail, NextHop, Succeed
from schemas.errors import CREDENTIAL_CLASSES, NEXT_HOP_CLASSES
from schemas.inference import InferenceResult
from schemas.routing import DEFAULT_MAX_ATTEMPTS, MAX_DEADLINE_S
from workers.providers.errors import ProviderError

MAX_ATTEMPTS = DEFAULT_MAX_ATTEMPTS
#: How long after its submission a run with no deadline may still wait for a cooling hop.
MAX_WAIT_S = MAX_DEADLINE_S
#: Added to a wait, so that the delayed message lands after the cooldown's key expired.
WAIT_MARGIN_S = 0.05


def decide(
    claim: Claim,
    outcome: InferenceResult | ProviderError,
    cooling: Cooling = (),
    now: datetime | None = None,
) -> Decision:
    if isinstance(outcome, InferenceResult):
        return Succeed(output=outcome.output, usage=outcome.usage)
    if not _moves_on(outcome, claim):
        return Fail(outcome.error_class, outcome.message, outcome.status_code)
    now = now or utcnow()
    last = f"the last answered {outcome.error_class}: {outcome.message}"
    following = claim.hop_index + 1
    if following >= len(claim.chain):
        return _exhausted(claim, "every hop failed", last, outcome.status_code)
    if claim.attempt >= claim.max_attempts:
        spent = f"the run spent its {claim.max_attempts} attempts"
        return _exhausted(claim, spent, last, outcome.status_code)
    if claim.deadline_at is not None and now >= claim.deadline_at:
        message = f"the run's deadline passed at {claim.deadline_at.isoformat()}; {last}"
        return Fail("deadline_exceeded", message, outcome.status_code)
    return _onward(claim, following, cooling, now, last, outcome.status_code)


def skip(claim: Claim, cooling: Cooling, now: datetime | None = None) -> NextHop | Fail:
    """The claimed hop is cooling down: the first hop from it on that is not, else a wait for
    the one that resets first; ``deadline_exceeded`` if the deadline comes first."""
    now = now or utcnow()
    until = cooling_until(cooling, claim.hop_index, now)
    why = f"cooling down until {until.isoformat()}" if until else "cooling down"
    last = f"hop {claim.hop_index} ({claim.hop.provider}, {claim.hop.credential}) is {why}"
    if claim.deadline_at is not None and now >= claim.deadline_at:
        message = f"the run's deadline passed at {claim.deadline_at.isoformat()}; {last}"
        return Fail("deadline_exceeded", message)
    return _onward(claim, claim.hop_index, cooling, now, last, None)


def _onward(
    claim: Claim, start: int, cooling: Cooling, now: datetime, last: str, status_code: int | None
) -> NextHop | Fail:
    found = ahead(claim.chain, cooling, start, now)
    if found is None:
        return _exhausted(claim, "every hop failed", last, status_code)
    provider = claim.chain[found.hop].provider
    if found.until is None:
        return NextHop(hop=found.hop, provider=provider)
    deadline = claim.deadline_at or claim.created_at + timedelta(seconds=MAX_WAIT_S)
    if found.until >= deadline:
        message = (
            f"every hop left is cooling down, the first until {found.until.isoformat()}, "
            f"past the run's deadline {deadline.isoformat()}; {last}"
        )
        return Fail("deadline_exceeded", message, status_code)
    delay_s = (found.until - now).total_seconds() + WAIT_MARGIN_S
    return NextHop(hop=found.hop, provider=provider, delay_s=delay_s)


def _exhausted(claim: Claim, why: str, last: str, status_code: int | None) -> Fail:
    if claim.policy == "byok_only":
        return Fail(
            "byok_exhausted", f"{why} (policy byok_only: no shared pool); {last}", status_code
        )
    return Fail("chain_exhausted", f"{why}; {last}", status_code)


def _moves_on(error: ProviderError, claim: Claim) -> bool:
    if error.error_class in NEXT_HOP_CLASSES:
        return True
    return error.error_class in CREDENTIAL_CLASSES and claim.hop.credential_kind == "byok"
