"""Fallback chains end to end: the real API, real Redis, a real worker process and fake
providers on loopback that answer in the providers' wire formats, told when to fail.

The tenant's own keys (BYOK) reach the OpenAI, Anthropic and Gemini fakes; the platform's
shared pool is Azure OpenAI with a platform credential, on a fake of its own, so that the Azure
fake's request log shows every call the shared pool got. Each test has a tenant of its own, so
a BYOK hop's cooldown (kept per tenant) never reaches another test; shared cooldowns
(platform-wide) are cleared between tests.
"""

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr
from sqlmodel import Session

from dispatcher.store.credentials import put_credential
from dispatcher.vault import PLATFORM_OWNER, keyring_for
from schemas.credentials import AzureOpenAICredential
from tests.fakes import anthropic, gemini, openai
from tests.fakes.anthropic import AnthropicFake
from tests.fakes.azure_openai import AzureOpenAIFake
from tests.fakes.common import FakeProvider, Reply, bad_gateway, hung
from tests.fakes.gemini import GeminiFake
from tests.fakes.openai import OpenAIFake
from tests.support.byok import (
    BACKENDS,
    backends,
    loopback_settings,
    loopback_system,
    new_tenant_with_id,
)
from tests.support.system import System, free_port, wait_for_run

pytestmark = pytest.mark.e2e

OPENAI_KEY = "sk-proj-tenant-openai-key-0001"
ANTHROPIC_KEY = "sk-ant-api03-tenant-key-0001"
GEMINI_KEY = "AIzaSy-tenant-gemini-key-0001"
PLATFORM_AZURE_KEY = "platform-azure-key-0001"
GPT, CLAUDE, GOOGLE = "openai/gpt-4o-mini", "anthropic/claude-sonnet-4", "google/gemini-2.5-pro"
PROMPT = {"prompt": "hello", "max_tokens": 16}
#: A closed port: nothing listens there, so a call gets a refused connection.
CLOSED = f"http://127.0.0.1:{free_port()}"
#: The tenant's credentials, by name. Two names for one key make two hops at one provider.
CREDENTIALS: dict[str, dict[str, str]] = {
    "oa": {"provider": "openai", "api_key": OPENAI_KEY},
    "oa2": {"provider": "openai", "api_key": OPENAI_KEY},
    "wrong": {"provider": "openai", "api_key": "sk-proj-revoked-key-9999"},
    "closed": {"provider": "openai", "api_key": OPENAI_KEY, "base_url": CLOSED},
    "ant": {"provider": "anthropic", "api_key": ANTHROPIC_KEY},
    "ant2": {"provider": "anthropic", "api_key": ANTHROPIC_KEY},
    "gem": {"provider": "gemini", "api_key": GEMINI_KEY},
    "gem2": {"provider": "gemini", "api_key": GEMINI_KEY},
}
SHARED_AZURE = {"provider": "azure_openai", "credential": "shared"}


def byok(name: str, **extra: Any) -> dict[str, Any]:
    return {"provider": CREDENTIALS[name]["provider"], "credential": f"byok:{name}"} | extra


@dataclass
class Fakes:
    openai: OpenAIFake
    azure: AzureOpenAIFake
    anthropic: AnthropicFake
    gemini: GeminiFake

    def all(self) -> list[FakeProvider]:
        return [self.openai, self.azure, self.anthropic, self.gemini]


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    azure = AzureOpenAIFake(PLATFORM_AZURE_KEY, deployments={"gpt-4o-mini": "gpt-4o-mini"})
    with (
        OpenAIFake(OPENAI_KEY).serve() as openai_fake,
        azure.serve(),
        AnthropicFake(ANTHROPIC_KEY).serve() as anthropic_fake,
        GeminiFake(GEMINI_KEY).serve() as gemini_fake,
    ):
        yield Fakes(openai_fake, azure, anthropic_fake, gemini_fake)


@pytest.fixture(scope="module", params=BACKENDS)
def system(
    request: pytest.FixtureRequest, fakes: Fakes, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    workdir: Path = tmp_path_factory.mktemp(f"chains-{request.param}")
    embedded = lambda: str(request.getfixturevalue("embedded_redis_url"))  # noqa: E731
    with backends(request.param, workdir, embedded) as (database_url, redis_url):
        endpoints = {
            "openai": fakes.openai.url,
            "anthropic": fakes.anthropic.url,
            "gemini": fakes.gemini.url,
        }
        settings = loopback_settings(
            database_url,
            redis_url,
            workdir,
            endpoints,
            shared_providers=["simulated", "azure_openai"],
        )
        running = loopback_system(settings, workdir)
        _register_shared_azure(running, fakes.azure.url)
        try:
            running.start_worker("openai", "azure_openai", "anthropic", "gemini", "simulated")
            running.start_api()
            yield running
        finally:
            running.stop()


def _register_shared_azure(system: System, url: str) -> None:
    secret = AzureOpenAICredential(endpoint=url, api_key=SecretStr(PLATFORM_AZURE_KEY))
    with Session(system.engine) as session:
        put_credential(
            session, keyring_for(system.settings), PLATFORM_OWNER, "azure_openai", secret
        )
        session.commit()


@pytest.fixture
def store(system: System) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(str(system.settings.redis_url))
    yield client
    client.close()


@pytest.fixture(autouse=True)
def clean(fakes: Fakes, system: System, store: redis.Redis) -> None:
    """Fresh fakes (empty logs and scripts) and no platform-wide cooldown left over."""
    for fake in fakes.all():
        fake.reset()
    for key in store.scan_iter(f"{system.settings.redis_namespace}:cooldown:*"):
        store.delete(key)


def tenant(system: System, hops: list[dict[str, Any]], **routing: Any) -> httpx.Client:
    """A new tenant with every credential of ``CREDENTIALS`` and one rule: ``hops`` for all."""
    _, key = new_tenant_with_id(system, f"t-{uuid.uuid4().hex[:8]}")
    client = system.client(key)
    for name, secret in CREDENTIALS.items():
        assert client.put(f"/v1/credentials/{name}", json=secret).status_code == 200
    config = {"rules": [{"match": "*", "hops": hops}]} | routing
    saved = client.put("/v1/routing", json=config)
    assert saved.status_code == 200, saved.text
    return client


def run(client: httpx.Client, app: str = GPT, **body: Any) -> Any:
    """Submit one run and wait for its end."""
    accepted = client.post("/v1/run", json={"app": app, "input": PROMPT} | body)
    assert accepted.status_code == 202, accepted.text
    return wait_for_run(client, accepted.json()["id"], timeout_s=40)


def served(run: Any) -> list[tuple[str, str | None, str, str | None]]:
    """Each attempt as (provider, credential name, outcome, error class)."""
    return [
        (a["provider"], a["credential_name"], a["outcome"], a["error_class"])
        for a in run["attempts"]
    ]


def events(system: System, store: redis.Redis, run_id: str) -> list[dict[str, Any]]:
    """The run's events, once its terminal one is in (events follow the commit)."""
    deadline = time.monotonic() + 10
    while True:
        entries = store.xrange(f"{system.settings.redis_namespace}:events:{run_id}")
        found = [json.loads(fields[b"event"]) for _, fields in entries]
        if (found and found[-1]["type"] in ("succeeded", "failed")) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def explain(client: httpx.Client, **body: Any) -> Any:
    response = client.post("/v1/routing/explain", json={"app": GPT} | body)
    assert response.status_code == 200, response.text
    return response.json()


def at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def test_byok_hops_go_first_and_the_shared_pool_serves_when_they_fail(
    system: System, fakes: Fakes
) -> None:
    client = tenant(system, [SHARED_AZURE, byok("oa")], policy="byok_first")
    first = run(client)
    assert first["status"] == "succeeded", system.logs()
    assert (first["provider"], first["credential_kind"]) == ("openai", "byok")
    assert served(first) == [("openai", "oa", "succeeded", None)]
    assert fakes.azure.requests == []

    fakes.openai.script(openai.server_error(500))
    second = run(client)
    assert second["status"] == "succeeded"
    assert (second["provider"], second["credential_kind"]) == ("azure_openai", "shared")
    assert served(second) == [
        ("openai", "oa", "failed", "provider_error"),
        ("azure_openai", None, "succeeded", None),
    ]
    [call] = fakes.azure.requests
    assert call.headers["authorization"] == f"Bearer {PLATFORM_AZURE_KEY}"


def test_byok_only_never_reaches_the_shared_pool(system: System, fakes: Fakes) -> None:
    client = tenant(system, [byok("oa"), SHARED_AZURE], policy="byok_only")
    fakes.openai.script(openai.server_error(503))
    failed = run(client)
    assert failed["status"] == "failed" and failed["error"]["code"] == "byok_exhausted"
    assert served(failed) == [("openai", "oa", "failed", "overloaded")]
    assert len(fakes.openai.requests) == 1
    assert fakes.azure.requests == []


@dataclass(frozen=True)
class Failure:
    app: str
    hops: list[dict[str, Any]]
    reply: Reply | None
    error_class: str
    status_code: int | None
    retry_after_s: float | None = None


GPT_HOPS = [byok("oa", timeout_s=1.5), SHARED_AZURE]
FAILURES = {
    "openai-429-without-retry-after": Failure(
        GPT, GPT_HOPS, openai.rate_limited(), "rate_limited", 429
    ),
    "openai-429-with-retry-after": Failure(
        GPT, GPT_HOPS, openai.rate_limited("2"), "rate_limited", 429, 2.0
    ),
    "openai-insufficient-quota": Failure(
        GPT, GPT_HOPS, openai.insufficient_quota(), "quota_exhausted", 429
    ),
    "openai-500": Failure(GPT, GPT_HOPS, openai.server_error(500), "provider_error", 500),
    "openai-502-html": Failure(GPT, GPT_HOPS, bad_gateway(), "provider_error", 502),
    "openai-503": Failure(GPT, GPT_HOPS, openai.server_error(503), "overloaded", 503),
    "hung-connection": Failure(GPT, GPT_HOPS, hung(5), "timeout", None),
    "closed-port": Failure(GPT, [byok("closed"), SHARED_AZURE], None, "connection_error", None),
    "wrong-key-401": Failure(GPT, [byok("wrong"), SHARED_AZURE], None, "auth_failed", 401),
    "anthropic-529": Failure(
        CLAUDE, [byok("ant"), byok("ant2")], anthropic.overloaded(), "overloaded", 529
    ),
    "google-resource-exhausted": Failure(
        GOOGLE, [byok("gem"), byok("gem2")], gemini.rate_limited("37s"), "rate_limited", 429, 37.0
    ),
}


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
def test_each_failure_of_the_first_hop_moves_the_run_to_the_next(
    system: System, fakes: Fakes, failure: Failure
) -> None:
    client = tenant(system, failure.hops)
    first = failure.hops[0]["provider"]
    if failure.reply is not None:
        {"openai": fakes.openai, "anthropic": fakes.anthropic, "gemini": fakes.gemini}[
            first
        ].script(failure.reply)
    done = run(client, failure.app)
    assert done["status"] == "succeeded", (done, system.logs())
    failed, succeeded = done["attempts"]
    assert (failed["provider"], failed["error_class"], failed["status_code"]) == (
        first,
        failure.error_class,
        failure.status_code,
    )
    assert failed["retry_after_s"] == failure.retry_after_s
    assert (succeeded["hop"], succeeded["number"], succeeded["outcome"]) == (1, 2, "succeeded")
    assert done["provider"] == failure.hops[1]["provider"]


def test_a_credential_refused_for_quota_is_marked_unhealthy(system: System, fakes: Fakes) -> None:
    client = tenant(system, GPT_HOPS)
    fakes.openai.script(openai.insufficient_quota())
    assert run(client)["provider"] == "azure_openai"
    shown = client.get("/v1/credentials/oa").json()
    assert shown["healthy"] is False


def test_an_invalid_request_fails_at_once_without_falling_back(
    system: System, fakes: Fakes
) -> None:
    client = tenant(system, GPT_HOPS)
    message = "Invalid 'max_completion_tokens': integer below minimum value."
    fakes.openai.script(Reply(400, openai.error_body(message, "invalid_request_error", None)))
    failed = run(client)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "invalid_request" and message in failed["error"]["message"]
    assert served(failed) == [("openai", "oa", "failed", "invalid_request")]
    assert fakes.azure.requests == []


def test_a_429_storm_on_one_hop_moves_every_run_to_the_next(system: System, fakes: Fakes) -> None:
    client = tenant(system, GPT_HOPS)
    fakes.openai.script(*[openai.rate_limited() for _ in range(8)])
    ids = [
        client.post("/v1/run", json={"app": GPT, "input": PROMPT}).json()["id"] for _ in range(8)
    ]
    runs = [wait_for_run(client, run_id, timeout_s=40) for run_id in ids]
    for done in runs:
        assert done["status"] == "succeeded" and done["provider"] == "azure_openai"
        assert served(done) == [
            ("openai", "oa", "failed", "rate_limited"),
            ("azure_openai", None, "succeeded", None),
        ]
    assert (len(fakes.openai.requests), len(fakes.azure.requests)) == (8, 8)


RETRY_AFTER_S = 5


def test_retry_after_is_respected_no_call_reaches_the_cooling_hop_before_its_reset(
    system: System, fakes: Fakes
) -> None:
    client = tenant(system, GPT_HOPS)
    fakes.openai.script(openai.rate_limited(str(RETRY_AFTER_S)))
    first = run(client)
    assert served(first) == [
        ("openai", "oa", "failed", "rate_limited"),
        ("azure_openai", None, "succeeded", None),
    ]
    # The cooldown began once the 429 was in: its reset is no earlier than this.
    reset = at(first["attempts"][0]["finished_at"]) + timedelta(seconds=RETRY_AFTER_S)

    ids = [
        client.post("/v1/run", json={"app": GPT, "input": PROMPT}).json()["id"] for _ in range(4)
    ]
    during = [wait_for_run(client, run_id, timeout_s=40) for run_id in ids]
    assert all(done["status"] == "succeeded" for done in during)
    openai_calls = [a for done in during for a in done["attempts"] if a["provider"] == "openai"]
    assert all(at(a["started_at"]) >= reset for a in openai_calls), openai_calls
    assert len(fakes.openai.requests) == 1 + len(openai_calls)
    # Runs that passed over the cooling hop spent no attempt on it.
    passed_over = [done for done in during if done["attempts"][0]["provider"] == "azure_openai"]
    assert passed_over, "no run was submitted while the hop was cooling down"
    for done in passed_over:
        assert [(a["hop"], a["number"]) for a in done["attempts"]] == [(1, 1)]

    # Once explain no longer shows it cooling, the hop serves again.
    deadline = time.monotonic() + 30
    while explain(client)["chain"][0]["provider"] != "openai":
        assert time.monotonic() < deadline, "the cooldown never ended"
        time.sleep(0.2)
    after = run(client)
    assert served(after) == [("openai", "oa", "succeeded", None)]


def test_a_chain_fully_cooling_down_waits_for_the_first_reset_then_succeeds(
    system: System, fakes: Fakes, store: redis.Redis
) -> None:
    client = tenant(system, [byok("oa"), byok("oa2")], policy="byok_only")
    fakes.openai.script(openai.rate_limited("6"), openai.rate_limited("60"))
    cooled = run(client)
    assert cooled["error"]["code"] == "byok_exhausted"
    assert [a["retry_after_s"] for a in cooled["attempts"]] == [6, 60]
    reset = at(cooled["attempts"][0]["finished_at"]) + timedelta(seconds=6)

    explained = explain(client)
    assert [hop["credential"] for hop in explained["chain"]] == ["byok:oa"]
    assert explained["waits_until"] is not None
    assert [(s["hop"]["credential"], s["code"]) for s in explained["skipped"]] == [
        ("byok:oa2", "cooling_down")
    ]

    waited = run(client)
    assert waited["status"] == "succeeded", system.logs()
    [attempt] = waited["attempts"]
    assert (attempt["credential_name"], attempt["number"]) == ("oa", 1)
    assert at(attempt["started_at"]) >= reset
    waiting = [e for e in events(system, store, waited["id"]) if e["type"] == "waiting"]
    assert waiting and waiting[0]["hop"] == 0
    assert len(fakes.openai.requests) == 3


def test_a_run_whose_hops_cool_past_its_deadline_fails_with_deadline_exceeded(
    system: System, fakes: Fakes, store: redis.Redis
) -> None:
    client = tenant(system, [byok("oa")], deadline_s=3)
    fakes.openai.script(openai.rate_limited("60"))
    assert run(client)["error"]["code"] == "chain_exhausted"
    late = run(client)
    assert late["status"] == "failed" and late["error"]["code"] == "deadline_exceeded"
    assert "cooling down until" in late["error"]["message"]
    assert late["attempts"] == []
    assert len(fakes.openai.requests) == 1
    announced = [e["type"] for e in events(system, store, late["id"])]
    assert announced[-1] == "failed" and "running" not in announced


def test_explain_agrees_with_what_a_run_then_does(system: System, fakes: Fakes) -> None:
    client = tenant(system, [byok("oa"), byok("oa2"), SHARED_AZURE])
    fakes.openai.script(openai.rate_limited("30"))
    assert served(run(client))[-1] == ("openai", "oa2", "succeeded", None)

    explained = explain(client)
    assert [(h["provider"], h["credential"]) for h in explained["chain"]] == [
        ("openai", "byok:oa2"),
        ("azure_openai", "shared"),
    ]
    [cooling] = explained["skipped"]
    assert (cooling["hop"]["credential"], cooling["code"]) == ("byok:oa", "cooling_down")
    assert served(run(client)) == [("openai", "oa2", "succeeded", None)]
    assert len(fakes.openai.requests) == 3  # the first run's two and this one's

    narrowed = {"policy": "shared_only"}
    explained = explain(client, routing=narrowed)
    assert [h["provider"] for h in explained["chain"]] == ["azure_openai"]
    assert {s["code"] for s in explained["skipped"]} == {"excluded_by_policy"}
    assert served(run(client, routing=narrowed)) == [("azure_openai", None, "succeeded", None)]
