"""Cooldowns: a hop that answered 429 (or "overloaded") with a retry-after rests until then.

The state lives in Redis, so every worker process, every machine and the API agree::

    {ns}:cooldown:<owner>:["<provider>", "<credential>", "<model>", "<region>"]
        -> the reset time (ISO 8601), expiring at it (``SET ... PX``)

- **Hop identity** is provider, credential, model and region: providers limit a key per model
  (OpenAI, Anthropic, Gemini) and per region (Vertex, Bedrock), so a limit on one model does
  not rest another. The JSON list keeps the key unambiguous whatever the names contain.
- **Owner**: the tenant for a BYOK hop (credential names are the tenant's own). A shared hop's
  cooldown is **platform-wide** (owner ``platform``): it calls the platform's credential, whose
  limit the runs of every tenant share, so the 429 one tenant's run got is the answer every
  other tenant's run would get until the reset; kept per tenant, each tenant would spend an
  attempt (and add to the provider's load) to learn the same thing.
- **What starts one**: only ``rate_limited`` and ``overloaded`` answers that carry a
  retry-after (``cooldown_s``). A retry-after over ``MAX_COOLDOWN_S`` (an hour) is cut to it: a
  provider or proxy announcing days would otherwise park a hop that long; lasting refusals
  (``quota_exhausted``, ``auth_failed``) mark the credential unhealthy instead.
- A later answer replaces the cooldown, shorter or longer: it is the provider's newest word.
- **Reads** take each key's ``PTTL`` (time left by Redis's own clock) in one pipelined round
  trip, so machines whose clocks disagree still agree on how long a hop rests.

``Cooldowns.read`` and ``Cooldowns.note`` answer a ``Cooling``: per hop of a chain, when it
resets, or None if it is not cooling. ``dispatcher.routing`` and ``workers.fallback`` take that
as an input; nothing else here decides anything.
"""

import json
from collections.abc import Sequence
from datetime import datetime, timedelta

import redis

from dispatcher.db import utcnow
from dispatcher.routing import Cooling
from schemas.hops import SHARED, Hop

#: The longest a hop rests, whatever its retry-after says (an hour).
MAX_COOLDOWN_S = 3600.0
#: The error classes whose retry-after starts a cooldown.
COOLING_CLASSES: frozenset[str] = frozenset({"rate_limited", "overloaded"})
PLATFORM = "platform"


def cooldown_s(error_class: str, retry_after_s: float | None) -> float | None:
    """How long a failure rests its hop (capped at ``MAX_COOLDOWN_S``); None: not at all."""
    if error_class not in COOLING_CLASSES or retry_after_s is None or retry_after_s <= 0:
        return None
    return min(retry_after_s, MAX_COOLDOWN_S)


class Cooldowns:
    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def key(self, tenant_id: str, hop: Hop) -> str:
        owner = PLATFORM if hop.credential == SHARED else tenant_id
        identity = json.dumps([hop.provider, hop.credential, hop.model or "", hop.region or ""])
        return f"{self.namespace}:cooldown:{owner}:{identity}"

    def read(self, tenant_id: str, chain: Sequence[Hop]) -> Cooling:
        """When each hop of ``chain`` resets (None: not cooling), in one round trip."""
        return self.note(tenant_id, chain)

    def read_many(self, tenant_id_chains: Sequence[tuple[str, Sequence[Hop]]]) -> list[Cooling]:
        """``read`` for many chains in one round trip, each hop's key asked once."""
        keys = list({self.key(t, hop): None for t, chain in tenant_id_chains for hop in chain})
        if not keys:
            return [() for _ in tenant_id_chains]
        now = utcnow()
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.pttl(key)
        resets = {key: _reset(now, ms) for key, ms in zip(keys, pipe.execute(), strict=True)}
        return [[resets[self.key(t, hop)] for hop in chain] for t, chain in tenant_id_chains]

    def note(
        self,
        tenant_id: str,
        chain: Sequence[Hop],
        failed: int | None = None,
        error_class: str = "",
        retry_after_s: float | None = None,
    ) -> Cooling:
        """Start the cooldown hop ``failed`` earned (if its failure earns one), then read the
        chain's cooling state: both in one round trip."""
        now = utcnow()
        pipe = self.client.pipeline(transaction=False)
        seconds = cooldown_s(error_class, retry_after_s)
        if failed is not None and seconds is not None:
            reset = (now + timedelta(seconds=seconds)).isoformat()
            pipe.set(self.key(tenant_id, chain[failed]), reset, px=max(1, round(seconds * 1000)))
        for hop in chain:
            pipe.pttl(self.key(tenant_id, hop))
        left_ms = pipe.execute()[-len(chain) :] if chain else []
        return [_reset(now, ms) for ms in left_ms]


def _reset(now: datetime, left_ms: int) -> datetime | None:
    """PTTL's answer as a reset time: -2 (no key) and -1 (no expiry, never set so) are none."""
    return now + timedelta(milliseconds=left_ms) if left_ms > 0 else None
