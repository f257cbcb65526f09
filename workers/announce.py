"""What a recorded attempt announces: the run events its outcome and next step mean."""

from typing import Any

from dispatcher.events import EventType
from dispatcher.models import Attempt
from dispatcher.store.lifecycle import Claim, Decision, Fail, NextHop, Succeed

Event = tuple[EventType, dict[str, Any]]


def running(claim: Claim) -> Event:
    hop = claim.hop
    return "running", {"attempt": claim.attempt, "hop": claim.hop_index, "provider": hop.provider}


def outcome_events(claim: Claim, attempt: Attempt | None, decision: Decision) -> list[Event]:
    """The events of a recorded attempt's outcome, or (``attempt`` None) of passing a hop over."""
    events: list[Event] = []
    if attempt is not None and attempt.outcome == "failed":
        events.append(("attempt_failed", _failure(attempt)))
    match decision:
        case Succeed():
            hop = claim.hop
            events.append(
                ("succeeded", {"provider": hop.provider, "credential_kind": hop.credential_kind})
            )
        case Fail(code=code, message=message):
            events.append(("failed", {"code": code, "message": message}))
        case NextHop(hop=hop_index, provider=provider, delay_s=delay_s):
            if hop_index != claim.hop_index:
                events.append(
                    (
                        "fell_back",
                        {"from_hop": claim.hop_index, "to_hop": hop_index, "provider": provider},
                    )
                )
            if delay_s > 0:
                events.append(("waiting", {"hop": hop_index, "delay_s": round(delay_s, 3)}))
    return events


def _failure(attempt: Attempt) -> dict[str, Any]:
    return {
        "attempt": attempt.number,
        "hop": attempt.hop,
        "provider": attempt.provider,
        "error_class": attempt.error_class,
        "status_code": attempt.status_code,
    }
