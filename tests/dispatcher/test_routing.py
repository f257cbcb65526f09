"""Chain resolution and config checks, as pure functions over a catalog of the tests' own."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dispatcher.catalog import Catalog
from dispatcher.routing import (
    Ahead,
    NoRoute,
    OverrideRefused,
    Resolution,
    ahead,
    check_config,
    explain,
    matches,
    resolve_chain,
)
from schemas.hops import Hop
from schemas.routing import RoutingConfig, RoutingOverride

CATALOG = Catalog(
    providers=frozenset({"openai", "anthropic", "vertex", "bedrock", "simulated"}),
    apps={
        "anthropic/claude-sonnet-4": {
            "anthropic": "claude-sonnet-4-0",
            "vertex": "claude-sonnet-4@20250514",
            "bedrock": "anthropic.claude-sonnet-4-v1:0",
        },
        "anthropic/haiku": {"anthropic": "claude-haiku"},
        "openai/gpt-4o": {"openai": "gpt-4o", "simulated": "echo"},
        "google/gemini-flash": {"vertex": "gemini-2.5-flash", "simulated": "echo"},
        "simulated/echo": {"simulated": "echo"},
    },
)
CREDENTIALS = {"oa": "openai", "ant": "anthropic", "gcp": "vertex", "aws": "bedrock"}
SHARED = ["simulated", "anthropic"]


def _config(*rules: tuple[str, list[dict[str, Any]]], **limits: Any) -> RoutingConfig:
    return RoutingConfig.model_validate(
        {"rules": [{"match": m, "hops": hops} for m, hops in rules]} | limits
    )


def _resolve(
    app: str, config: RoutingConfig | None = None, override: RoutingOverride | None = None
) -> Resolution:
    return resolve_chain(app, config, override, CATALOG, CREDENTIALS, SHARED)


def _hops(resolution: Resolution) -> list[tuple[str, str]]:
    return [(hop.provider, hop.credential) for hop in resolution.chain]


def byok(provider: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"provider": provider, "credential": f"byok:{name}"} | extra


def shared(provider: str, **extra: Any) -> dict[str, Any]:
    return {"provider": provider, "credential": "shared"} | extra


MIXED = _config(
    ("openai/*", [shared("simulated"), byok("openai", "oa"), byok("openai", "oa", region="eu")]),
    (
        "anthropic/*",
        [
            byok("anthropic", "ant"),
            shared("anthropic"),
            byok("vertex", "gcp"),
            byok("bedrock", "aws"),
        ],
    ),
)


@pytest.mark.parametrize(
    ("pattern", "app", "expected"),
    [
        ("google/*", "google/gemini-flash", True),
        ("google/*", "googlex/gemini", False),
        ("anthropic/claude-*", "anthropic/claude-sonnet-4", True),
        ("anthropic/claude-*", "anthropic/haiku", False),
        ("*", "simulated/echo", True),
        ("simulated/echo", "simulated/echo", True),
        ("simulated/echo", "simulated/echo2", False),
        ("Google/*", "google/gemini-flash", False),
    ],
)
def test_patterns_match_with_star_only(pattern: str, app: str, expected: bool) -> None:
    assert matches(pattern, app) is expected


def test_without_a_config_the_platform_default_is_the_shared_providers_serving_the_app() -> None:
    resolution = _resolve("anthropic/claude-sonnet-4")
    assert resolution.chain == [
        Hop(provider="anthropic", credential="shared", model="claude-sonnet-4-0")
    ]
    assert (resolution.policy, resolution.max_attempts, resolution.deadline_s, resolution.rule) == (
        "byok_first",
        6,
        None,
        None,
    )


def test_an_app_no_shared_provider_serves_has_no_route_by_default() -> None:
    with pytest.raises(NoRoute, match="anthropic/claude-sonnet-4") as caught:
        resolve_chain("anthropic/claude-sonnet-4", None, None, CATALOG, CREDENTIALS, ["simulated"])
    assert "cannot serve" in str(caught.value)


def test_the_first_matching_rule_wins() -> None:
    config = _config(
        ("anthropic/claude-*", [byok("anthropic", "ant")]),
        ("anthropic/*", [byok("bedrock", "aws")]),
        ("*", [shared("simulated")]),
    )
    claude = _resolve("anthropic/claude-sonnet-4", config)
    assert (claude.rule, _hops(claude)) == (0, [("anthropic", "byok:ant")])
    echo = _resolve("simulated/echo", config)
    assert (echo.rule, _hops(echo)) == (2, [("simulated", "shared")])


def test_a_matching_rule_whose_hops_all_drop_does_not_fall_through() -> None:
    config = _config(("anthropic/*", [byok("bedrock", "aws")]), ("*", [shared("anthropic")]))
    with pytest.raises(NoRoute, match="bedrock"):
        _resolve("anthropic/haiku", config)


def test_an_app_no_rule_matches_gets_the_platform_default() -> None:
    config = _config(("openai/*", [byok("openai", "oa")]))
    resolution = _resolve("simulated/echo", config)
    assert (resolution.rule, _hops(resolution)) == (None, [("simulated", "shared")])


def test_a_chain_crosses_providers_with_each_ones_model_id_from_the_catalog() -> None:
    config = _config(
        (
            "anthropic/*",
            [
                byok("vertex", "gcp", region="us-east5"),
                byok("bedrock", "aws", model="my-arn"),
                shared("anthropic"),
            ],
        )
    )
    assert _resolve("anthropic/claude-sonnet-4", config).chain == [
        Hop(
            provider="vertex",
            credential="byok:gcp",
            model="claude-sonnet-4@20250514",
            region="us-east5",
        ),
        Hop(provider="bedrock", credential="byok:aws", model="my-arn"),
        Hop(provider="anthropic", credential="shared", model="claude-sonnet-4-0"),
    ]


def test_byok_first_puts_byok_hops_before_shared_ones_keeping_their_order() -> None:
    assert _hops(_resolve("openai/gpt-4o", MIXED)) == [
        ("openai", "byok:oa"),
        ("openai", "byok:oa"),
        ("simulated", "shared"),
    ]
    assert [hop.region for hop in _resolve("openai/gpt-4o", MIXED).chain] == [None, "eu", None]


def test_byok_only_never_takes_a_shared_hop() -> None:
    config = MIXED.model_copy(update={"policy": "byok_only"})
    resolution = _resolve("anthropic/claude-sonnet-4", config)
    assert _hops(resolution) == [
        ("anthropic", "byok:ant"),
        ("vertex", "byok:gcp"),
        ("bedrock", "byok:aws"),
    ]
    assert resolution.policy == "byok_only"


def test_byok_only_without_a_byok_hop_has_no_route() -> None:
    with pytest.raises(NoRoute, match="byok_only"):
        _resolve("simulated/echo", RoutingConfig(policy="byok_only"))


def test_shared_only_never_takes_a_byok_hop() -> None:
    config = MIXED.model_copy(update={"policy": "shared_only"})
    assert _hops(_resolve("anthropic/claude-sonnet-4", config)) == [("anthropic", "shared")]


def test_allow_fallbacks_false_pins_the_first_hop() -> None:
    pinned = _resolve("anthropic/claude-sonnet-4", MIXED, RoutingOverride(allow_fallbacks=False))
    assert _hops(pinned) == [("anthropic", "byok:ant")]


def test_order_prefers_providers_within_each_tier() -> None:
    override = RoutingOverride(order=["bedrock", "anthropic", "vertex"])
    assert _hops(_resolve("anthropic/claude-sonnet-4", MIXED, override)) == [
        ("bedrock", "byok:aws"),
        ("anthropic", "byok:ant"),
        ("vertex", "byok:gcp"),
        ("anthropic", "shared"),
    ]
    pinned = RoutingOverride(order=["vertex"], allow_fallbacks=False)
    assert _hops(_resolve("anthropic/claude-sonnet-4", MIXED, pinned)) == [("vertex", "byok:gcp")]


@pytest.mark.parametrize(
    ("hop", "code", "reason"),
    [
        (byok("anthropic", "gone"), "no_credential", "no usable credential 'gone'"),
        (byok("anthropic", "oa"), "no_credential", "is for provider 'openai', not 'anthropic'"),
        (shared("vertex"), "no_shared_compute", "provider 'vertex' has no shared compute"),
        (
            byok("openai", "oa"),
            "cannot_serve",
            "provider 'openai' cannot serve 'anthropic/claude-sonnet-4'",
        ),
        (
            {"provider": "anthropic", "credential": "mine"},
            "no_credential",
            "neither 'shared' nor 'byok:<name>'",
        ),
        (shared("ghost"), "unknown_provider", "provider 'ghost' is unknown"),
    ],
)
def test_hops_the_run_cannot_take_are_dropped_with_a_code_and_a_reason(
    hop: dict[str, Any], code: str, reason: str
) -> None:
    config = _config(("anthropic/*", [hop, byok("bedrock", "aws")]))
    resolution = _resolve("anthropic/claude-sonnet-4", config)
    assert _hops(resolution) == [("bedrock", "byok:aws")]
    [skipped] = resolution.skipped
    assert skipped.code == code and reason in skipped.reason


def test_hops_the_policy_excludes_or_a_pin_cuts_are_skipped_with_why() -> None:
    config = MIXED.model_copy(update={"policy": "byok_only"})
    pinned = _resolve("anthropic/claude-sonnet-4", config, RoutingOverride(allow_fallbacks=False))
    assert _hops(pinned) == [("anthropic", "byok:ant")]
    assert [(s.hop.provider, s.code) for s in pinned.skipped] == [
        ("anthropic", "excluded_by_policy"),
        ("vertex", "fallbacks_off"),
        ("bedrock", "fallbacks_off"),
    ]
    assert "'byok_only' excludes shared hops" in pinned.skipped[0].reason


def test_no_route_carries_what_was_skipped_and_why() -> None:
    with pytest.raises(NoRoute) as caught:
        _resolve("simulated/echo", RoutingConfig(policy="byok_only"))
    resolution = caught.value.resolution
    assert resolution.chain == [] and resolution.policy == "byok_only"
    assert [(s.hop.provider, s.code) for s in resolution.skipped] == [
        ("anthropic", "cannot_serve"),
        ("simulated", "excluded_by_policy"),
    ]


@pytest.mark.parametrize(
    ("tenant", "override", "message"),
    [
        ({"policy": "byok_only"}, {"policy": "byok_first"}, "routing.policy"),
        ({"policy": "byok_only"}, {"policy": "shared_only"}, "routing.policy"),
        ({"policy": "shared_only"}, {"policy": "byok_only"}, "routing.policy"),
        ({"max_attempts": 3}, {"max_attempts": 4}, "routing.max_attempts: 4 is over"),
        ({"deadline_s": 30}, {"deadline_s": 31}, "routing.deadline_s: 31 is over"),
        ({}, {"order": ["openai", "nope"]}, "routing.order: provider 'nope' is unknown"),
    ],
)
def test_a_request_cannot_widen_the_tenants_routing(
    tenant: dict[str, Any], override: dict[str, Any], message: str
) -> None:
    config = MIXED.model_copy(update=tenant)
    with pytest.raises(OverrideRefused, match=message):
        _resolve("openai/gpt-4o", config, RoutingOverride.model_validate(override))


@pytest.mark.parametrize(
    ("tenant", "override", "expected"),
    [
        ({}, {"policy": "byok_only"}, ("byok_only", 6, None)),
        ({}, {"policy": "shared_only"}, ("shared_only", 6, None)),
        ({"policy": "byok_only"}, {"policy": "byok_only"}, ("byok_only", 6, None)),
        ({"max_attempts": 4}, {"max_attempts": 2}, ("byok_first", 2, None)),
        ({"deadline_s": 60}, {"deadline_s": 5}, ("byok_first", 6, 5)),
        ({}, {"deadline_s": 5}, ("byok_first", 6, 5)),
        ({"deadline_s": 60, "max_attempts": 3}, {}, ("byok_first", 3, 60)),
    ],
)
def test_a_request_may_narrow_the_tenants_routing(
    tenant: dict[str, Any], override: dict[str, Any], expected: tuple[str, int, float | None]
) -> None:
    config = MIXED.model_copy(update=tenant)
    resolution = _resolve("openai/gpt-4o", config, RoutingOverride.model_validate(override))
    assert (resolution.policy, resolution.max_attempts, resolution.deadline_s) == expected


def test_a_narrower_policy_changes_the_chain() -> None:
    narrowed = _resolve("openai/gpt-4o", MIXED, RoutingOverride(policy="shared_only"))
    assert _hops(narrowed) == [("simulated", "shared")]


def test_a_valid_config_has_no_problems() -> None:
    assert check_config(MIXED, CATALOG, CREDENTIALS, SHARED) == []


def test_each_hop_that_cannot_be_saved_is_named() -> None:
    config = _config(
        ("anthropic/*", [byok("anthropic", "ant"), shared("foo")]),
        ("openai/gpt-4o", [byok("openai", "nope"), byok("anthropic", "oa"), shared("vertex")]),
        ("google/*", [byok("openai", "oa")]),
        ("acme/thing", [shared("simulated")]),
    )
    problems = [str(p) for p in check_config(config, CATALOG, CREDENTIALS, SHARED)]
    assert problems == [
        "rules[0].hops[1]: provider 'foo' is unknown",
        "rules[1].hops[0]: the tenant has no usable credential 'nope'",
        "rules[1].hops[1]: credential 'byok:oa' is for provider 'openai', not 'anthropic'",
        "rules[1].hops[2]: provider 'vertex' has no shared compute",
        "rules[2].hops[0]: provider 'openai' cannot serve any app matching 'google/*'",
        "rules[3].hops[0]: provider 'simulated' cannot serve 'acme/thing'",
    ]


def test_a_hop_serving_some_of_the_apps_a_pattern_matches_may_be_saved() -> None:
    config = _config(("*", [byok("openai", "oa"), shared("simulated")]))
    assert check_config(config, CATALOG, CREDENTIALS, SHARED) == []


# Cooling hops: where a run goes now (``ahead``), and what explain answers.

NOW = datetime(2030, 1, 1, tzinfo=UTC)
THREE = [Hop(provider="anthropic"), Hop(provider="vertex"), Hop(provider="bedrock")]


def _in(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("cooling", "start", "expected"),
    [
        ([], 0, Ahead(0, None, [])),
        ([None, None, None], 1, Ahead(1, None, [])),
        ([_in(5), None, _in(1)], 0, Ahead(1, None, [0])),
        ([_in(-1), None, None], 0, Ahead(0, None, [])),
        ([_in(5), _in(9), _in(2)], 0, Ahead(2, _in(2), [0, 1])),
        ([_in(1), _in(9), _in(2)], 1, Ahead(2, _in(2), [1])),
        ([None, None, None], 3, None),
    ],
)
def test_ahead_is_the_first_hop_not_cooling_else_the_first_to_reset(
    cooling: list[datetime | None], start: int, expected: Ahead | None
) -> None:
    assert ahead(THREE, cooling, start, NOW) == expected


def _mixed_claude() -> Resolution:
    resolution = _resolve("anthropic/claude-sonnet-4", MIXED)
    assert _hops(resolution) == [
        ("anthropic", "byok:ant"),
        ("vertex", "byok:gcp"),
        ("bedrock", "byok:aws"),
        ("anthropic", "shared"),
    ]
    return resolution


def test_explain_with_nothing_cooling_is_the_resolved_chain() -> None:
    resolution = _mixed_claude()
    explained = explain(resolution, [], NOW)
    assert explained.chain == resolution.chain and explained.waits_until is None
    assert explained.skipped == resolution.skipped


def test_explain_leaves_out_the_cooling_hops_saying_until_when() -> None:
    resolution = _mixed_claude()
    explained = explain(resolution, [_in(30), None, _in(-5), _in(10)], NOW)
    assert [hop.provider for hop in explained.chain] == ["vertex", "bedrock"]
    assert explained.waits_until is None
    cooling = [(s.hop.provider, s.code, s.until) for s in explained.skipped]
    assert cooling == [
        ("anthropic", "cooling_down", _in(30)),
        ("anthropic", "cooling_down", _in(10)),
    ]
    assert explained.skipped[0].reason == f"cooling down until {_in(30).isoformat()}"


def test_explain_with_every_hop_cooling_waits_for_the_first_reset() -> None:
    resolution = _mixed_claude()
    explained = explain(resolution, [_in(30), _in(8), _in(20), _in(10)], NOW)
    assert explained.chain == [resolution.chain[1]] and explained.waits_until == _in(8)
    assert [s.hop.provider for s in explained.skipped] == ["anthropic", "bedrock", "anthropic"]


def test_explain_with_no_route_has_an_empty_chain() -> None:
    with pytest.raises(NoRoute) as caught:
        _resolve("simulated/echo", RoutingConfig(policy="byok_only"))
    explained = explain(caught.value.resolution, [], NOW)
    assert explained.chain == [] and explained.waits_until is None
    assert [s.code for s in explained.skipped] == ["cannot_serve", "excluded_by_policy"]
