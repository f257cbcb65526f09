"""Bring your own key, end to end: tenants' credentials through the real API, Redis, an OpenAI
worker pool process and the store, to a fake OpenAI on loopback that checks the bearer key and
logs every call. Its log shows which key each run was sent with; usage and cost land on the
run; the credential test call reports ok or the provider's refusal; a revoked key is not used
again. And ``dispatcher serve`` refuses to start in production without a real vault key."""

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatcher.vault import EXAMPLE_KEK
from schemas.hops import Hop
from tests.fakes.openai import OpenAIFake
from tests.support.byok import BACKENDS, new_tenant_with_id, running_system, submit_pinned
from tests.support.system import System, free_port, wait_for_run

pytestmark = pytest.mark.e2e

APP = "openai/gpt-4o-mini"
ONLY_OPENAI = {
    "policy": "byok_only",
    "rules": [{"match": "openai/*", "hops": [{"provider": "openai", "credential": "byok:main"}]}],
}


def _key() -> str:
    return f"sk-{secrets.token_urlsafe(24)}"


@dataclass
class Byok:
    system: System
    openai: OpenAIFake

    def tenant(self, name: str) -> tuple[str, httpx.Client]:
        """A new tenant: its id and an API client."""
        tenant_id, key = new_tenant_with_id(self.system, f"{name}-{secrets.token_hex(4)}")
        return tenant_id, self.system.client(key)


@pytest.fixture(scope="module", params=BACKENDS)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Byok]:
    workdir = tmp_path_factory.mktemp(f"byok-{request.param}")
    with OpenAIFake(_key()).serve() as fake:
        endpoints = {"openai": fake.url}
        with running_system(request, workdir, endpoints, [("openai",)]) as system:
            yield Byok(system, fake)


@pytest.fixture
def byok(served: Byok) -> Byok:
    served.openai.reset()
    return served


def _put_key(client: httpx.Client, name: str, key: str) -> None:
    put = client.put(f"/v1/credentials/{name}", json={"provider": "openai", "api_key": key})
    assert put.status_code == 200, put.text
    assert key not in put.text


def _run(client: httpx.Client, prompt: str) -> Any:
    accepted = client.post("/v1/run", json={"app": APP, "input": {"prompt": prompt}})
    assert accepted.status_code == 202, accepted.text
    return wait_for_run(client, accepted.json()["id"], timeout_s=30)


def _sent(fake: OpenAIFake) -> list[tuple[str, str]]:
    """(last message, bearer key) of each call the fake received."""
    return [
        (logged.json["messages"][-1]["content"], logged.headers["authorization"][len("Bearer ") :])
        for logged in fake.requests
    ]


def test_each_tenants_run_reaches_the_provider_with_its_own_key_and_no_other(byok: Byok) -> None:
    (_, acme), (_, globex) = byok.tenant("acme"), byok.tenant("globex")
    acme_key, globex_key = _key(), _key()
    for client, key in ((acme, acme_key), (globex, globex_key)):
        _put_key(client, "main", key)
        assert client.put("/v1/routing", json=ONLY_OPENAI).status_code == 200

    # The fake accepts one key at a time: a run sent with the other tenant's key would fail.
    byok.openai.key = acme_key
    acme_run = _run(acme, "from acme")
    byok.openai.key = globex_key
    globex_run = _run(globex, "from globex")

    assert _sent(byok.openai) == [("from acme", acme_key), ("from globex", globex_key)]
    for run, prompt in ((acme_run, "from acme"), (globex_run, "from globex")):
        assert run["status"] == "succeeded", run
        assert run["output"]["text"] == prompt
        assert (run["provider"], run["credential_kind"], run["credential_name"]) == (
            "openai",
            "byok",
            "main",
        )


def test_usage_and_cost_of_a_byok_run_land_on_the_run_and_in_the_usage_report(
    byok: Byok,
) -> None:
    _, client = byok.tenant("usage")
    _put_key(client, "main", byok.openai.key)
    assert client.put("/v1/routing", json=ONLY_OPENAI).status_code == 200

    run = _run(client, "count me")

    assert run["status"] == "succeeded", run
    # The fake's usage block: 1230 prompt tokens (1024 cached), 75 completion (32 reasoning).
    usage = run["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (1230, 75)
    assert (usage["cached_input_tokens"], usage["reasoning_tokens"]) == (1024, 32)
    assert usage["raw"]["prompt_tokens_details"]["cached_tokens"] == 1024
    # gpt-4o-mini: $0.15 per million input tokens, $0.60 per million output tokens.
    assert run["cost_usd"] == pytest.approx(0.0002295)
    [attempt] = run["attempts"]
    assert attempt["cost_usd"] == run["cost_usd"] and attempt["credential_kind"] == "byok"
    report = client.get("/v1/usage", params={"group_by": "provider,credential_kind,billed_to"})
    [row] = report.json()["data"]
    assert (row["provider"], row["credential_kind"], row["billed_to"]) == (
        "openai",
        "byok",
        "tenant_cloud",
    )
    assert (row["input_tokens"], row["output_tokens"]) == (1230, 75)
    assert row["cost_usd"] == pytest.approx(0.0002295)


def test_the_credential_test_call_reports_ok_or_the_error_class_and_the_providers_message(
    byok: Byok,
) -> None:
    _, client = byok.tenant("tester")
    wrong = _key()
    _put_key(client, "good", byok.openai.key)
    _put_key(client, "wrong", wrong)

    ok = client.post("/v1/credentials/good/test", timeout=45)
    assert ok.status_code == 200, ok.text
    assert ok.json()["ok"] is True and ok.json()["error_class"] is None
    [call] = byok.openai.requests
    assert call.headers["authorization"] == f"Bearer {byok.openai.key}"
    assert call.json["max_completion_tokens"] <= 16  # small and cheap

    refused = client.post("/v1/credentials/wrong/test", timeout=45)
    assert refused.status_code == 200, refused.text
    body = refused.json()
    assert (body["ok"], body["error_class"], body["status_code"]) == (False, "auth_failed", 401)
    assert "Incorrect API key provided" in body["message"]
    assert wrong not in refused.text and wrong[:8] not in refused.text
    assert byok.openai.last.headers["authorization"] == f"Bearer {wrong}"
    shown = client.get("/v1/credentials/wrong").json()
    assert shown["healthy"] is False and shown["health_reason"].startswith("auth_failed")
    assert client.post("/v1/credentials/missing/test").status_code == 404


def test_a_revoked_key_is_not_used_by_later_runs_and_a_new_one_replaces_it(byok: Byok) -> None:
    tenant_id, client = byok.tenant("revoker")
    old_key, new_key = byok.openai.key, _key()
    _put_key(client, "main", old_key)
    assert client.put("/v1/routing", json=ONLY_OPENAI).status_code == 200
    assert _run(client, "before")["status"] == "succeeded"

    assert client.delete("/v1/credentials/main").status_code == 204
    refused = client.post("/v1/run", json={"app": APP, "input": {"prompt": "after"}})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "no_route"
    assert "'main'" in refused.json()["error"]["message"]
    # A run routed before the revocation, claimed after it: the worker finds no key.
    hop = Hop(provider="openai", credential="byok:main", model="gpt-4o-mini", timeout_s=10)
    late = wait_for_run(
        client, submit_pinned(byok.system, tenant_id, APP, {"prompt": "late"}, [hop])
    )
    assert late["status"] == "failed", late
    assert late["attempts"][0]["error_class"] == "auth_failed"
    assert "missing or revoked" in late["attempts"][0]["message"]

    byok.openai.key = new_key
    _put_key(client, "main", new_key)
    assert _run(client, "replaced")["status"] == "succeeded"
    assert _sent(byok.openai) == [("before", old_key), ("replaced", new_key)]


@pytest.mark.parametrize(
    ("command", "kek"),
    [
        (("dispatcher", "serve"), None),
        (("dispatcher", "serve"), "changeme"),
        (("dispatcher", "serve"), EXAMPLE_KEK),
        (("workers", "openai"), None),
    ],
    ids=["serve-unset", "serve-placeholder", "serve-documented-example", "worker-unset"],
)
def test_production_refuses_a_missing_or_placeholder_kek_with_a_clear_message(
    command: tuple[str, ...], kek: str | None, embedded_redis_url: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env |= {
        "DISPATCHER_ENVIRONMENT": "production",
        "DISPATCHER_VAR_DIR": str(tmp_path / "var"),
        "REDIS_URL": embedded_redis_url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "PORT": str(free_port()),
    }
    if kek is not None:
        env["DISPATCHER_KEK"] = kek
    done = subprocess.run(
        [sys.executable, "-m", *command],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "DISPATCHER_KEK" in last, done.stderr
    assert ("not set" if kek is None else "placeholder") in last, done.stderr
    assert "base64 of 32 random bytes" in last  # it says what to set instead
    if kek is not None and ":" in kek:
        assert kek.partition(":")[2] not in done.stderr  # the key itself is never printed
    assert not (tmp_path / "var" / "dev-kek").exists()  # no fallback to a development key
