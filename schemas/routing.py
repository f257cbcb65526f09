"""The routing config a tenant saves (``PUT /v1/routing``) and the override a request may send.

A config is an ordered list of rules; the first rule whose ``match`` pattern matches a run's
app gives the run its chain of hops. A pattern is an app id in which ``*`` stands for any run
of characters (``google/*``, ``anthropic/claude-*``, ``*``); everything else matches itself.

``POST /v1/routing/explain`` takes an ``ExplainRequest`` and answers a ``RoutingExplanation``:
the hops a run of the app would take right now, and why each other hop is skipped.
"""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.hops import Hop

#: ``byok_first``: the tenant's own hops, then the shared pool; ``byok_only``: never the shared
#: pool; ``shared_only``: never the tenant's own credentials.
Policy = Literal["byok_first", "byok_only", "shared_only"]
DEFAULT_POLICY: Policy = "byok_first"
#: Attempts a run may spend over its whole chain unless the tenant says otherwise.
DEFAULT_MAX_ATTEMPTS = 6
MAX_MAX_ATTEMPTS = 20
#: The longest deadline a config or a request may set (a day).
MAX_DEADLINE_S = 86_400.0

APP_PATTERN = r"^[A-Za-z0-9._:@/*-]+$"

#: Why a hop is skipped: its provider is unknown; its credential is missing, unusable or for
#: another provider; its provider has no shared compute or cannot serve the app; the policy
#: excludes its tier; ``allow_fallbacks: false`` pinned the run to another hop; it is cooling
#: down after a 429 (or an overload) with a retry-after.
SkipCode = Literal[
    "unknown_provider",
    "no_credential",
    "no_shared_compute",
    "cannot_serve",
    "excluded_by_policy",
    "fallbacks_off",
    "cooling_down",
]


class RoutingRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    match: str = Field(min_length=1, max_length=200, pattern=APP_PATTERN)
    hops: list[Hop] = Field(min_length=1, max_length=16)


class RoutingConfig(BaseModel):
    """A tenant's routing: the body of ``PUT /v1/routing``."""

    model_config = ConfigDict(extra="forbid")

    policy: Policy = DEFAULT_POLICY
    rules: list[RoutingRule] = Field(default_factory=list, max_length=100)
    #: Attempts over the whole chain, every hop counted.
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1, le=MAX_MAX_ATTEMPTS)
    #: Seconds from submission after which a run stops moving along its chain; None: no limit.
    deadline_s: float | None = Field(default=None, gt=0, le=MAX_DEADLINE_S)


class RoutingPublic(RoutingConfig):
    """``GET /v1/routing``: the config in force. ``version`` is None (and ``updated_at`` too)
    while the tenant has saved none: the platform default applies."""

    version: int | None
    updated_at: datetime | None


class RoutingOverride(BaseModel):
    """``routing`` in ``POST /v1/run``: narrows the tenant's routing for one run, never widens it.

    - ``policy``: ``byok_only`` or ``shared_only`` when the tenant's is ``byok_first``; the
      tenant's own otherwise (switching between the two is refused).
    - ``order``: providers to prefer, most preferred first. Within each tier of the policy
      (BYOK hops, then shared ones) hops at these providers move to the front in this order;
      hops at providers it does not name keep their relative order after them. It reorders
      the chain; it never adds or removes a hop.
    - ``allow_fallbacks: false``: the chain is cut to its first hop.
    - ``max_attempts`` and ``deadline_s``: at most the tenant's.
    """

    model_config = ConfigDict(extra="forbid")

    policy: Policy | None = None
    order: list[str] | None = Field(default=None, max_length=32)
    allow_fallbacks: bool = True
    max_attempts: int | None = Field(default=None, ge=1, le=MAX_MAX_ATTEMPTS)
    deadline_s: float | None = Field(default=None, gt=0, le=MAX_DEADLINE_S)


class ExplainRequest(BaseModel):
    """``POST /v1/routing/explain``: the app and the override a run would be submitted with."""

    model_config = ConfigDict(extra="forbid")

    app: str = Field(min_length=1, max_length=200)
    routing: RoutingOverride | None = None


class SkippedHop(BaseModel):
    hop: Hop
    code: SkipCode
    reason: str
    #: ``cooling_down``: when the hop's cooldown ends.
    cooling_until: datetime | None = None


class RoutingExplanation(BaseModel):
    """What a run of ``app`` submitted now would do."""

    app: str
    #: The config version in force (None: the platform default) and the rule that matched
    #: (its index; None: no rule matched and the platform default applies).
    version: int | None
    rule: int | None
    policy: Policy
    max_attempts: int
    deadline_s: float | None
    #: The hops it would take, in order, each after the one before fails. Hops cooling down
    #: are left out, unless every hop is: then the run waits until ``waits_until`` and this
    #: is the hop that resets first.
    chain: list[Hop]
    skipped: list[SkippedHop]
    waits_until: datetime | None = None
