"""Routing: which hops a run takes, and whether a tenant's config may be saved.

Both are pure functions of their arguments: the tenant's ``RoutingConfig`` (None when it saved
none), the request's ``RoutingOverride``, the app catalog, the tenant's usable credentials
(name -> provider) and the providers with shared compute. No I/O here.

``resolve_chain`` runs these steps, each a small function:

1. narrow the tenant's limits by the override (a widening is refused: ``OverrideRefused``);
2. take the hops of the first rule whose pattern matches the app, else the platform default
   (the shared hops of ``shared_providers``);
3. drop hops that cannot serve the app or whose credential is not there; fill in the catalog's
   model id for hops that name none;
4. apply the policy: keep the tiers it allows, BYOK hops before shared ones for ``byok_first``,
   the override's provider ``order`` within each tier, the first hop only without fallbacks.

Nothing left: ``NoRoute``, saying what was dropped and why. Each dropped hop is a ``Skipped``
with a ``code`` (``SkipCode``) and a sentence.

The run keeps hops that are cooling down in its chain (they may reset before it reaches them);
it passes over them as it goes. Where it goes next, given the chain's ``Cooling`` (per hop,
when it resets; read from Redis by ``dispatcher.cooldowns``), is ``ahead``: the one rule the
worker's fallback decision and ``explain`` (``POST /v1/routing/explain``) both apply, so what
explain answers is what a run then does.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase

from dispatcher.catalog import Catalog
from schemas.hops import SHARED, Hop
from schemas.routing import Policy, RoutingConfig, RoutingOverride, SkipCode

BYOK_PREFIX = "byok:"

#: Per hop of a chain, when its cooldown ends; None (or no entry): it is not cooling.
Cooling = Sequence[datetime | None]

#: The policies a request may choose, by the tenant's policy: only ever a subset of its hops.
NARROWER: dict[str, frozenset[str]] = {
    "byok_first": frozenset({"byok_first", "byok_only", "shared_only"}),
    "byok_only": frozenset({"byok_only"}),
    "shared_only": frozenset({"shared_only"}),
}

#: The credential kinds each policy lets a run use, in the order it tries them.
TIERS: dict[str, tuple[str, ...]] = {
    "byok_first": ("byok", "shared"),
    "byok_only": ("byok",),
    "shared_only": ("shared",),
}


class RoutingError(ValueError):
    """A request the routing cannot serve as asked."""


class NoRoute(RoutingError):
    """No hop can serve the app with what this tenant may use; ``resolution`` (its chain
    empty) says what was dropped and why."""

    def __init__(self, message: str, resolution: "Resolution") -> None:
        super().__init__(message)
        self.resolution = resolution


class OverrideRefused(RoutingError):
    """The request's ``routing`` would widen what the tenant allows, or names unknown providers."""


@dataclass(frozen=True)
class Skipped:
    hop: Hop
    code: SkipCode
    reason: str
    #: ``cooling_down``: when the hop's cooldown ends.
    until: datetime | None = None


@dataclass(frozen=True)
class Resolution:
    chain: list[Hop]
    policy: Policy
    max_attempts: int
    deadline_s: float | None
    #: The index of the rule that matched; None: the platform default.
    rule: int | None
    #: Hops the rule named that the run will not take, and why.
    skipped: list[Skipped]


@dataclass(frozen=True)
class Limits:
    policy: Policy
    max_attempts: int
    deadline_s: float | None
    order: tuple[str, ...]
    allow_fallbacks: bool


@dataclass(frozen=True)
class Problem:
    """Why a config cannot be saved: ``loc`` names the rule or hop (``rules[1].hops[0]``)."""

    loc: str
    message: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.message}"


def resolve_chain(
    app: str,
    config: RoutingConfig | None,
    override: RoutingOverride | None,
    catalog: Catalog,
    credentials: Mapping[str, str],
    shared_providers: Sequence[str],
) -> Resolution:
    """The chain of hops for one run of ``app``; see the module docstring for the steps."""
    limits = narrow(config or RoutingConfig(), override or RoutingOverride(), catalog.providers)
    rule, hops = _candidates(app, config, shared_providers)
    usable, skipped = _usable(app, hops, catalog, credentials, shared_providers)
    chain, excluded = _apply_policy(usable, limits)
    skipped += excluded
    resolution = Resolution(
        chain, limits.policy, limits.max_attempts, limits.deadline_s, rule, skipped
    )
    if not chain:
        raise NoRoute(_no_route_message(app, limits.policy, skipped), resolution)
    return resolution


def narrow(config: RoutingConfig, override: RoutingOverride, providers: frozenset[str]) -> Limits:
    """The tenant's limits, narrowed by the request's override; refused if it widens them."""
    problems = [
        *_widening(config, override),
        *(
            f"routing.order: provider {provider!r} is unknown"
            for provider in override.order or []
            if provider not in providers
        ),
    ]
    if problems:
        raise OverrideRefused("; ".join(problems))
    deadlines = [s for s in (config.deadline_s, override.deadline_s) if s is not None]
    return Limits(
        policy=override.policy or config.policy,
        max_attempts=override.max_attempts or config.max_attempts,
        deadline_s=min(deadlines, default=None),
        order=tuple(override.order or ()),
        allow_fallbacks=override.allow_fallbacks,
    )


def _widening(config: RoutingConfig, override: RoutingOverride) -> list[str]:
    problems = []
    if override.policy is not None and override.policy not in NARROWER[config.policy]:
        problems.append(
            f"routing.policy: {override.policy!r} would widen the tenant's {config.policy!r}"
        )
    if override.max_attempts is not None and override.max_attempts > config.max_attempts:
        problems.append(
            f"routing.max_attempts: {override.max_attempts} is over the tenant's "
            f"{config.max_attempts}"
        )
    if (
        override.deadline_s is not None
        and config.deadline_s is not None
        and override.deadline_s > config.deadline_s
    ):
        problems.append(
            f"routing.deadline_s: {override.deadline_s:g} is over the tenant's "
            f"{config.deadline_s:g}"
        )
    return problems


def matches(pattern: str, app: str) -> bool:
    """``*`` stands for any run of characters, ``/`` included; the rest matches itself."""
    return fnmatchcase(app, pattern)


def _candidates(
    app: str, config: RoutingConfig | None, shared_providers: Sequence[str]
) -> tuple[int | None, list[Hop]]:
    for index, rule in enumerate(config.rules if config else []):
        if matches(rule.match, app):
            return index, list(rule.hops)
    return None, [Hop(provider=provider, credential=SHARED) for provider in shared_providers]


def _usable(
    app: str,
    hops: list[Hop],
    catalog: Catalog,
    credentials: Mapping[str, str],
    shared_providers: Sequence[str],
) -> tuple[list[Hop], list[Skipped]]:
    """The hops that can serve ``app`` (each with its model id), and the others with why."""
    serving = catalog.serving(app)
    usable, skipped = [], []
    for hop in hops:
        problem = _hop_problem(app, hop, serving, catalog, credentials, shared_providers)
        if problem is None:
            usable.append(
                hop if hop.model else hop.model_copy(update={"model": serving[hop.provider]})
            )
        else:
            skipped.append(Skipped(hop, *problem))
    return usable, skipped


def _hop_problem(
    app: str,
    hop: Hop,
    serving: Mapping[str, str],
    catalog: Catalog,
    credentials: Mapping[str, str],
    shared_providers: Sequence[str],
) -> tuple[SkipCode, str] | None:
    reason = _provider_problem(hop, catalog)
    if reason is not None:
        return "unknown_provider", reason
    reason = _credential_problem(hop, credentials, shared_providers)
    if reason is not None:
        return ("no_shared_compute" if hop.credential == SHARED else "no_credential"), reason
    if hop.provider not in serving:
        return "cannot_serve", f"provider {hop.provider!r} cannot serve {app!r}"
    return None


def _apply_policy(hops: list[Hop], limits: Limits) -> tuple[list[Hop], list[Skipped]]:
    """The tiers the policy allows, in its order and the override's; one hop if pinned."""
    tiers = TIERS[limits.policy]
    kept = [hop for hop in hops if hop.credential_kind in tiers]
    excluded = [
        Skipped(
            hop,
            "excluded_by_policy",
            f"policy {limits.policy!r} excludes {hop.credential_kind} hops",
        )
        for hop in hops
        if hop.credential_kind not in tiers
    ]
    rank = {provider: index for index, provider in enumerate(limits.order)}
    kept.sort(key=lambda hop: (tiers.index(hop.credential_kind), rank.get(hop.provider, len(rank))))
    if limits.allow_fallbacks:
        return kept, excluded
    pinned = "allow_fallbacks is false: the run is pinned to its first hop"
    return kept[:1], excluded + [Skipped(hop, "fallbacks_off", pinned) for hop in kept[1:]]


def _no_route_message(app: str, policy: str, skipped: list[Skipped]) -> str:
    message = f"no hop can serve app {app!r} under policy {policy!r}"
    if skipped:
        message += ": " + "; ".join(f"{_label(s.hop)} skipped, {s.reason}" for s in skipped)
    return message


def _label(hop: Hop) -> str:
    return f"{hop.provider} ({hop.credential})"


def _provider_problem(hop: Hop, catalog: Catalog) -> str | None:
    return None if hop.provider in catalog.providers else f"provider {hop.provider!r} is unknown"


def _credential_problem(
    hop: Hop, credentials: Mapping[str, str], shared_providers: Sequence[str]
) -> str | None:
    if hop.credential == SHARED:
        if hop.provider in shared_providers:
            return None
        return f"provider {hop.provider!r} has no shared compute"
    name = hop.credential.removeprefix(BYOK_PREFIX)
    if not hop.credential.startswith(BYOK_PREFIX) or not name:
        return f"credential {hop.credential!r} is neither 'shared' nor 'byok:<name>'"
    owner = credentials.get(name)
    if owner is None:
        return f"the tenant has no usable credential {name!r}"
    if owner != hop.provider:
        return f"credential {hop.credential!r} is for provider {owner!r}, not {hop.provider!r}"
    return None


@dataclass(frozen=True)
class Ahead:
    """Where a run about to take hop ``start`` of its chain goes now (see ``ahead``)."""

    #: The hop it takes next.
    hop: int
    #: None: at once. Else every hop from ``start`` on is cooling down, and ``hop`` is the
    #: one that resets first, at this time: the run waits for it.
    until: datetime | None
    #: The cooling hops it passes over on the way.
    passed: list[int]


def cooling_until(cooling: Cooling, index: int, now: datetime) -> datetime | None:
    """When hop ``index`` resets, if it is cooling down at ``now``."""
    until = cooling[index] if index < len(cooling) else None
    return until if until is not None and until > now else None


def ahead(chain: Sequence[Hop], cooling: Cooling, start: int, now: datetime) -> Ahead | None:
    """The first hop from ``start`` on that is not cooling down; if every one is, the one
    that resets first (the run waits for it). None: no hop from ``start`` on."""
    left = range(start, len(chain))
    resets = {index: cooling_until(cooling, index, now) for index in left}
    ready = [index for index in left if resets[index] is None]
    if ready:
        return Ahead(ready[0], None, [index for index in left if index < ready[0]])
    if not resets:
        return None
    first = min(left, key=lambda index: resets[index] or now)
    return Ahead(first, resets[first], [index for index in left if index != first])


@dataclass(frozen=True)
class Explanation:
    """What a run of the app submitted now does (``POST /v1/routing/explain``)."""

    resolution: Resolution
    #: The hops it takes, in order: its chain without the hops that are cooling down, or, if
    #: every hop is, the one it waits for (until ``waits_until``).
    chain: list[Hop]
    #: Every hop it does not take, and why: those routing dropped, then the cooling ones.
    skipped: list[Skipped]
    waits_until: datetime | None


def explain(resolution: Resolution, cooling: Cooling, now: datetime) -> Explanation:
    """``resolution`` (a chain as a run stores it) as a run walks it at ``now``, per ``ahead``."""
    chain = resolution.chain
    resets = [cooling_until(cooling, index, now) for index in range(len(chain))]
    first = ahead(chain, cooling, 0, now)
    waits_until = first.until if first else None
    taken = [first.hop] if first and waits_until else [i for i, t in enumerate(resets) if not t]
    skipped = [
        Skipped(hop, "cooling_down", f"cooling down until {until.isoformat()}", until)
        for index, (hop, until) in enumerate(zip(chain, resets, strict=True))
        if index not in taken and until is not None
    ]
    return Explanation(
        resolution, [chain[i] for i in taken], resolution.skipped + skipped, waits_until
    )


def check_config(
    config: RoutingConfig,
    catalog: Catalog,
    credentials: Mapping[str, str],
    shared_providers: Sequence[str],
) -> list[Problem]:
    """Every hop that cannot be saved: an unknown provider, a credential the tenant does not
    have (or one for another provider), or a provider that serves no app the rule matches."""
    problems = []
    for i, rule in enumerate(config.rules):
        apps = [app for app in catalog.apps if matches(rule.match, app)]
        for j, hop in enumerate(rule.hops):
            message = (
                _provider_problem(hop, catalog)
                or _credential_problem(hop, credentials, shared_providers)
                or _serving_problem(hop, rule.match, apps, catalog)
            )
            if message is not None:
                problems.append(Problem(f"rules[{i}].hops[{j}]", message))
    return problems


def _serving_problem(hop: Hop, pattern: str, apps: list[str], catalog: Catalog) -> str | None:
    if any(hop.provider in catalog.serving(app) for app in apps):
        return None
    if "*" in pattern:
        return f"provider {hop.provider!r} cannot serve any app matching {pattern!r}"
    return f"provider {hop.provider!r} cannot serve {pattern!r}"
