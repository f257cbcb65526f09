"""Routing: which hops a run takes, and whether a tenant's config may be saved.

Both are pure functions of their arguments: the tenant's ``RoutingConfig`` (None when it saved
none), the request's ``RoutingOverride``, the app catalog, the tenant's usable credentials
(name -> provider) and the providers with shared compute. No I/O here.

``resolve_chain`` runs these steps, each a small function, so that more inputs (hops cooling
down until a time, say) slot in as one more filter:

1. narrow the tenant's limits by the override (a widening is refused: ``OverrideRefused``);
2. take the hops of the first rule whose pattern matches the app, else the platform default
   (the shared hops of ``shared_providers``);
3. drop hops that cannot serve the app or whose credential is not there; fill in the catalog's
   model id for hops that name none;
4. apply the policy: keep the tiers it allows, BYOK hops before shared ones for ``byok_first``,
   the override's provider ``order`` within each tier, the first hop only without fallbacks.

Nothing left: ``NoRoute``, saying what was dropped and why.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from dispatcher.catalog import Catalog
from schemas.hops import SHARED, Hop
from schemas.routing import Policy, RoutingConfig, RoutingOverride

BYOK_PREFIX = "byok:"

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
    """No hop can serve the app with what this tenant may use."""


class OverrideRefused(RoutingError):
    """The request's ``routing`` would widen what the tenant allows, or names unknown providers."""


@dataclass(frozen=True)
class Skipped:
    hop: Hop
    reason: str


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
    if not chain:
        raise NoRoute(_no_route_message(app, limits.policy, skipped))
    return Resolution(chain, limits.policy, limits.max_attempts, limits.deadline_s, rule, skipped)


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
        reason = _provider_problem(hop, catalog) or _credential_problem(
            hop, credentials, shared_providers
        )
        if reason is None and hop.provider not in serving:
            reason = f"provider {hop.provider!r} cannot serve {app!r}"
        if reason is None:
            usable.append(
                hop if hop.model else hop.model_copy(update={"model": serving[hop.provider]})
            )
        else:
            skipped.append(Skipped(hop, reason))
    return usable, skipped


def _apply_policy(hops: list[Hop], limits: Limits) -> tuple[list[Hop], list[Skipped]]:
    """The tiers the policy allows, in its order and the override's; one hop if pinned."""
    tiers = TIERS[limits.policy]
    kept = [hop for hop in hops if hop.credential_kind in tiers]
    excluded = [
        Skipped(hop, f"policy {limits.policy!r} excludes {hop.credential_kind} hops")
        for hop in hops
        if hop.credential_kind not in tiers
    ]
    rank = {provider: index for index, provider in enumerate(limits.order)}
    kept.sort(key=lambda hop: (tiers.index(hop.credential_kind), rank.get(hop.provider, len(rank))))
    return (kept if limits.allow_fallbacks else kept[:1]), excluded


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
