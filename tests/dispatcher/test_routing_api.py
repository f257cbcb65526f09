"""``/v1/routing`` and routed submissions, in process over real Redis and a real store.

The services get a catalog of the tests' own, so these tests do not depend on which
providers the shipped catalog lists.
"""

from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlmodel import Session, func, select

from dispatcher.catalog import Catalog
from dispatcher.cooldowns import Cooldowns
from dispatcher.db import utcnow
from dispatcher.models import RoutingVersion, Run
from dispatcher.services import Services
from dispatcher.store import lifecycle
from dispatcher.store.credentials import mark_unhealthy, put_credential
from schemas.credentials import AnthropicCredential, OpenAICredential
from schemas.hops import Hop
from tests.dispatcher.conftest import new_tenant

CATALOG = Catalog(
    providers=frozenset({"simulated", "openai", "anthropic"}),
    apps={
        "simulated/echo": {"simulated": "echo"},
        "openai/gpt-4o": {"openai": "gpt-4o-2024", "simulated": "echo"},
        "anthropic/claude": {"anthropic": "claude-x"},
    },
)

CONFIG: dict[str, Any] = {
    "policy": "byok_first",
    "max_attempts": 3,
    "deadline_s": 60,
    "rules": [
        {
            "match": "openai/*",
            "hops": [
                {"provider": "simulated", "credential": "shared"},
                {"provider": "openai", "credential": "byok:oa", "timeout_s": 20},
            ],
        },
        {"match": "*", "hops": [{"provider": "simulated", "credential": "shared"}]},
    ],
}
GPT = {"app": "openai/gpt-4o", "input": {"prompt": "hi"}}


@pytest.fixture
def services(services: Services) -> Services:
    """The in-process API's services, with this module's catalog."""
    services.catalog = CATALOG
    return services


@pytest.fixture
def tenant(services: Services) -> tuple[str, dict[str, str]]:
    """A tenant with an OpenAI credential ``oa`` and an Anthropic one ``ant``."""
    tenant_id, auth = new_tenant(services, "acme")
    with Session(services.engine) as session:
        put_credential(
            session, services.keyring, tenant_id, "oa", OpenAICredential(api_key=SecretStr("sk-t"))
        )
        put_credential(
            session, services.keyring, tenant_id, "ant", AnthropicCredential(api_key=SecretStr("k"))
        )
        session.commit()
    return tenant_id, auth


@pytest.fixture
def auth(tenant: tuple[str, dict[str, str]]) -> dict[str, str]:
    return tenant[1]


def _run(services: Services, run_id: str) -> Run:
    with Session(services.engine) as session:
        run = session.get(Run, run_id)
        assert run is not None
        return run


def _queued(services: Services, provider: str) -> int:
    return int(services.redis.llen(f"{services.settings.redis_namespace}:run.{provider}"))


def _stored(services: Services, model: type[Run] | type[RoutingVersion]) -> int:
    with Session(services.engine) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def test_without_a_saved_config_get_shows_the_platform_default(
    api: TestClient, auth: dict[str, str]
) -> None:
    response = api.get("/v1/routing", headers=auth)
    assert response.status_code == 200
    assert response.json() == {
        "policy": "byok_first",
        "rules": [],
        "max_attempts": 6,
        "deadline_s": None,
        "version": None,
        "updated_at": None,
    }


def test_each_save_adds_the_next_version_and_get_shows_the_latest(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    first = api.put("/v1/routing", json=CONFIG, headers=auth)
    assert first.status_code == 200, first.text
    assert first.json()["version"] == 1
    second = api.put("/v1/routing", json=CONFIG | {"policy": "shared_only"}, headers=auth)
    assert second.json()["version"] == 2
    shown = api.get("/v1/routing", headers=auth).json()
    assert (shown["version"], shown["policy"], shown["max_attempts"]) == (2, "shared_only", 3)
    assert shown["rules"][0]["hops"][1]["credential"] == "byok:oa"
    assert _stored(services, RoutingVersion) == 2


def test_another_tenants_config_is_not_seen(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    api.put("/v1/routing", json=CONFIG, headers=auth)
    _, other = new_tenant(services, "globex")
    assert api.get("/v1/routing", headers=other).json()["version"] is None


def _with_hop(rule: int, hop: dict[str, Any], match: str | None = None) -> dict[str, Any]:
    rules = [dict(r) for r in CONFIG["rules"]]
    rules[rule] = {"match": match or rules[rule]["match"], "hops": [hop]}
    return CONFIG | {"rules": rules}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param(
            _with_hop(1, {"provider": "foo"}),
            "rules[1].hops[0]: provider 'foo' is unknown",
            id="unknown-provider",
        ),
        pytest.param(
            _with_hop(0, {"provider": "openai", "credential": "byok:nope"}),
            "rules[0].hops[0]: the tenant has no usable credential 'nope'",
            id="missing-credential",
        ),
        pytest.param(
            _with_hop(0, {"provider": "openai", "credential": "byok:ant"}),
            "rules[0].hops[0]: credential 'byok:ant' is for provider 'anthropic', not 'openai'",
            id="credential-of-another-provider",
        ),
        pytest.param(
            _with_hop(0, {"provider": "anthropic", "credential": "byok:ant"}, "openai/gpt-4o"),
            "rules[0].hops[0]: provider 'anthropic' cannot serve 'openai/gpt-4o'",
            id="provider-cannot-serve-app",
        ),
        pytest.param(
            _with_hop(1, {"provider": "openai", "credential": "shared"}),
            "rules[1].hops[0]: provider 'openai' has no shared compute",
            id="no-shared-compute",
        ),
    ],
)
def test_a_hop_that_cannot_be_saved_is_refused_by_name_and_nothing_is_stored(
    api: TestClient,
    auth: dict[str, str],
    services: Services,
    config: dict[str, Any],
    message: str,
) -> None:
    response = api.put("/v1/routing", json=config, headers=auth)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_routing"
    assert error["message"] == message
    assert error["details"] == [{"loc": message.split(":")[0], "message": message.split(": ")[1]}]
    assert _stored(services, RoutingVersion) == 0


def test_a_malformed_config_is_a_validation_error(api: TestClient, auth: dict[str, str]) -> None:
    response = api.put("/v1/routing", json=CONFIG | {"policy": "cheapest"}, headers=auth)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


def test_a_run_records_the_version_policy_and_bounds_it_was_routed_with(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    api.put("/v1/routing", json=CONFIG, headers=auth)
    api.put("/v1/routing", json=CONFIG, headers=auth)
    accepted = api.post("/v1/run", json=GPT, headers=auth)
    assert accepted.status_code == 202, accepted.text
    run = _run(services, accepted.json()["id"])
    assert (run.routing_version, run.policy, run.max_attempts) == (2, "byok_first", 3)
    assert run.deadline_at == run.created_at + timedelta(seconds=60)
    assert run.chain == [
        {"provider": "openai", "credential": "byok:oa", "model": "gpt-4o-2024", "timeout_s": 20},
        {"provider": "simulated", "credential": "shared", "model": "echo", "timeout_s": 60},
    ]
    assert (_queued(services, "openai"), _queued(services, "simulated")) == (1, 0)
    with services.engine.begin() as connection:
        [claim] = lifecycle.claim_runs(connection, [(run.id, 0)], lease_s=30)
    assert (claim.policy, claim.max_attempts, claim.deadline_at) == (
        "byok_first",
        3,
        run.deadline_at,
    )


def test_a_run_without_a_config_records_no_version_and_the_defaults(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    accepted = api.post("/v1/run", json=GPT, headers=auth)
    run = _run(services, accepted.json()["id"])
    assert (run.routing_version, run.policy, run.max_attempts, run.deadline_at) == (
        None,
        "byok_first",
        6,
        None,
    )
    assert [hop["provider"] for hop in run.chain] == ["simulated"]


def test_a_request_may_narrow_the_tenants_routing(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    api.put("/v1/routing", json=CONFIG, headers=auth)
    override = {"policy": "shared_only", "max_attempts": 2, "deadline_s": 10}
    accepted = api.post("/v1/run", json=GPT | {"routing": override}, headers=auth)
    assert accepted.status_code == 202, accepted.text
    run = _run(services, accepted.json()["id"])
    assert [hop["credential"] for hop in run.chain] == ["shared"]
    assert (run.policy, run.max_attempts) == ("shared_only", 2)
    assert run.deadline_at == run.created_at + timedelta(seconds=10)
    assert (_queued(services, "openai"), _queued(services, "simulated")) == (0, 1)


def test_allow_fallbacks_false_pins_the_first_hop(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    api.put("/v1/routing", json=CONFIG, headers=auth)
    body = GPT | {"routing": {"allow_fallbacks": False}}
    run = _run(services, api.post("/v1/run", json=body, headers=auth).json()["id"])
    assert [(hop["provider"], hop["credential"]) for hop in run.chain] == [("openai", "byok:oa")]


@pytest.mark.parametrize(
    ("tenant_config", "override", "message"),
    [
        ({"policy": "byok_only"}, {"policy": "shared_only"}, "routing.policy"),
        ({}, {"max_attempts": 4}, "routing.max_attempts: 4 is over the tenant's 3"),
        ({}, {"deadline_s": 61}, "routing.deadline_s: 61 is over the tenant's 60"),
        ({}, {"order": ["foo"]}, "routing.order: provider 'foo' is unknown"),
    ],
)
def test_a_request_that_widens_the_tenants_routing_is_refused_and_nothing_is_stored(
    api: TestClient,
    auth: dict[str, str],
    services: Services,
    tenant_config: dict[str, Any],
    override: dict[str, Any],
    message: str,
) -> None:
    api.put("/v1/routing", json=CONFIG | tenant_config, headers=auth)
    response = api.post("/v1/run", json=GPT | {"routing": override}, headers=auth)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "routing_override_refused" and message in error["message"]
    assert _stored(services, Run) == 0
    assert (_queued(services, "openai"), _queued(services, "simulated")) == (0, 0)


def test_byok_only_with_no_byok_hop_for_the_app_has_no_route(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    api.put("/v1/routing", json=CONFIG | {"policy": "byok_only"}, headers=auth)
    response = api.post("/v1/run", json={"app": "simulated/echo", "input": {}}, headers=auth)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "no_route" and "byok_only" in error["message"]
    assert _stored(services, Run) == 0


def test_an_unhealthy_credential_is_skipped_at_submission(
    api: TestClient, tenant: tuple[str, dict[str, str]], services: Services
) -> None:
    tenant_id, auth = tenant
    api.put("/v1/routing", json=CONFIG, headers=auth)
    with Session(services.engine) as session:
        assert mark_unhealthy(session, tenant_id, "oa", "401 from provider")
        session.commit()
    run = _run(services, api.post("/v1/run", json=GPT, headers=auth).json()["id"])
    assert [hop["credential"] for hop in run.chain] == ["shared"]


# POST /v1/routing/explain: what a run submitted now would do, and why.

EXPLAIN_GPT = {"app": "openai/gpt-4o"}
GPT_CHAIN = [
    {"provider": "openai", "credential": "byok:oa", "model": "gpt-4o-2024", "timeout_s": 20},
    {"provider": "simulated", "credential": "shared", "model": "echo", "timeout_s": 60},
]


def _explain(api: TestClient, auth: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/v1/routing/explain", json=body, headers=auth)
    assert response.status_code == 200, response.text
    explained: dict[str, Any] = response.json()
    return explained


def _explain_cooling(
    api: TestClient,
    services: Services,
    tenant: tuple[str, dict[str, str]],
    cooling: dict[int, float],
) -> dict[str, Any]:
    """Explain GPT for ``tenant`` (with ``CONFIG``) while hops cool: hop index -> seconds."""
    tenant_id, auth = tenant
    api.put("/v1/routing", json=CONFIG, headers=auth)
    chain = [Hop.model_validate(h) for h in GPT_CHAIN]
    cooldowns = Cooldowns(services.redis, services.settings.redis_namespace)
    for hop, seconds in cooling.items():
        cooldowns.note(tenant_id, chain, hop, "rate_limited", seconds)
    return _explain(api, auth, EXPLAIN_GPT)


def _chain(explained: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in hop.items() if v is not None} for hop in explained["chain"]]


def test_explain_answers_the_chain_a_run_then_stores_and_stores_nothing(
    api: TestClient, auth: dict[str, str], services: Services
) -> None:
    api.put("/v1/routing", json=CONFIG, headers=auth)
    explained = _explain(api, auth, EXPLAIN_GPT)
    assert _chain(explained) == GPT_CHAIN
    assert {k: explained[k] for k in ("app", "version", "rule", "policy", "max_attempts")} == {
        "app": "openai/gpt-4o",
        "version": 1,
        "rule": 0,
        "policy": "byok_first",
        "max_attempts": 3,
    }
    assert (explained["deadline_s"], explained["skipped"], explained["waits_until"]) == (
        60,
        [],
        None,
    )
    assert _stored(services, Run) == 0 and _queued(services, "openai") == 0
    run = _run(services, api.post("/v1/run", json=GPT, headers=auth).json()["id"])
    assert run.chain == GPT_CHAIN


def test_explain_leaves_out_a_cooling_hop_saying_until_when(
    api: TestClient, tenant: tuple[str, dict[str, str]], services: Services
) -> None:
    explained = _explain_cooling(api, services, tenant, {0: 30})
    assert _chain(explained) == GPT_CHAIN[1:] and explained["waits_until"] is None
    [cooling] = explained["skipped"]
    assert (cooling["hop"]["provider"], cooling["code"]) == ("openai", "cooling_down")
    until = datetime.fromisoformat(cooling["cooling_until"])
    assert utcnow() + timedelta(seconds=25) < until <= utcnow() + timedelta(seconds=30)
    assert cooling["reason"] == f"cooling down until {until.isoformat()}"
    # The cooldown is this tenant's: another tenant's credential of the same name is not cooling.
    other_id, other = new_tenant(services, "globex")
    with Session(services.engine) as session:
        key = OpenAICredential(api_key=SecretStr("sk-o"))
        put_credential(session, services.keyring, other_id, "oa", key)
        session.commit()
    api.put("/v1/routing", json=CONFIG, headers=other)
    assert _chain(_explain(api, other, EXPLAIN_GPT)) == GPT_CHAIN


def test_explain_with_every_hop_cooling_says_the_run_waits_for_the_first_reset(
    api: TestClient, tenant: tuple[str, dict[str, str]], services: Services
) -> None:
    explained = _explain_cooling(api, services, tenant, {0: 30, 1: 10})
    assert _chain(explained) == GPT_CHAIN[1:]
    assert explained["waits_until"] is not None
    [cooling] = explained["skipped"]
    assert cooling["hop"]["provider"] == "openai" and cooling["code"] == "cooling_down"
    assert datetime.fromisoformat(explained["waits_until"]) < datetime.fromisoformat(
        cooling["cooling_until"]
    )


def test_explain_says_why_hops_are_skipped_by_policy_or_credential(
    api: TestClient, tenant: tuple[str, dict[str, str]], services: Services
) -> None:
    tenant_id, auth = tenant
    api.put("/v1/routing", json=CONFIG, headers=auth)
    narrowed = _explain(api, auth, EXPLAIN_GPT | {"routing": {"policy": "shared_only"}})
    assert _chain(narrowed) == GPT_CHAIN[1:]
    assert [(s["hop"]["provider"], s["code"]) for s in narrowed["skipped"]] == [
        ("openai", "excluded_by_policy")
    ]
    with Session(services.engine) as session:
        mark_unhealthy(session, tenant_id, "oa", "401 from provider")
        session.commit()
    services.changes.announce(tenant_id)  # as the worker that marks it unhealthy does
    unhealthy = _explain(api, auth, EXPLAIN_GPT)
    [skipped] = unhealthy["skipped"]
    assert skipped["code"] == "no_credential" and "'oa'" in skipped["reason"]


def test_explain_with_no_route_answers_an_empty_chain_and_every_reason(
    api: TestClient, auth: dict[str, str]
) -> None:
    api.put("/v1/routing", json=CONFIG | {"policy": "byok_only"}, headers=auth)
    explained = _explain(api, auth, {"app": "simulated/echo"})
    assert explained["chain"] == [] and explained["policy"] == "byok_only"
    assert [s["code"] for s in explained["skipped"]] == ["excluded_by_policy"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"app": "acme/nothing"}, "unknown_app"),
        (EXPLAIN_GPT | {"routing": {"max_attempts": 9}}, "routing_override_refused"),
        (EXPLAIN_GPT | {"input": {}}, "validation_error"),
    ],
)
def test_explain_refuses_what_a_submission_would_refuse(
    api: TestClient, auth: dict[str, str], body: dict[str, Any], code: str
) -> None:
    api.put("/v1/routing", json=CONFIG, headers=auth)
    response = api.post("/v1/routing/explain", json=body, headers=auth)
    assert response.status_code == 422 and response.json()["error"]["code"] == code
    assert api.post("/v1/routing/explain", json=EXPLAIN_GPT).status_code == 401
