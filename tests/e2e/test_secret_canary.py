"""The secret canary.

Unique fake secrets for six providers (API keys, Azure's key, a Vertex service account's private
key, Bedrock's secret access key and session token, and the vault's own key-encryption key) go
through the real system: the API, the Redis queues, worker processes logging at DEBUG, the store
and fake providers on loopback, some of which quote a wrong key back in their 401 bodies. Success
and failure paths both: routed runs that fall back, every credential's test call, credentials the
API refuses, a key pasted with a trailing newline, a dead-lettered message.

Then every log line the processes wrote, every key of the Redis keyspace (values read by type,
streams and dramatiq's dead-letter sets included), every row of every table of the store and
every API response the test received are searched for each secret, its first 8 characters and
any 12-character piece of it: zero hits. The fakes' own request logs show the same search finds
the keys that were sent, so a clean result is not a blind one.
"""

import base64
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import httpx
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import rsa

from dispatcher.queue import actor_name, make_broker, queue_name
from tests.fakes import bedrock, gemini, openai
from tests.fakes.anthropic import AnthropicFake
from tests.fakes.azure_openai import AzureOpenAIFake
from tests.fakes.bedrock import BedrockFake
from tests.fakes.common import FakeProvider, LoggedRequest
from tests.fakes.gemini import GeminiFake
from tests.fakes.google import VertexFake, new_rsa_key, service_account_info
from tests.fakes.openai import OpenAIFake
from tests.support.byok import (
    BACKENDS,
    leaks,
    log_dump,
    new_tenant_with_id,
    recording_client,
    redis_dump,
    running_system,
    store_dump,
)
from tests.support.system import System, wait_for_run

pytestmark = pytest.mark.e2e

AZURE_DEPLOYMENT = "chat-prod"
BEDROCK_KEY_ID = "AKIACANARY0000000001"  # an access key id is not a secret: SigV4 sends it
DEAD_LETTER_MARK = "run_deadlettercanary"
#: One worker pool process for every provider the canary uses.
POOL = ("simulated", "openai", "anthropic", "gemini", "azure_openai", "vertex", "bedrock")


def _token(length: int = 32) -> str:
    """A fresh random secret; its first 8 characters are random too."""
    return secrets.token_urlsafe(length)[:length]


def _pem_lines(key: rsa.RSAPrivateKey) -> list[str]:
    """The base64 lines of the key's PEM: what a leak of the private key would show."""
    pem = str(service_account_info(key, "")["private_key"])
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


@dataclass
class Keys:
    """Every secret of the canary, by name."""

    vertex_key: rsa.RSAPrivateKey = field(default_factory=new_rsa_key)
    unknown_key: rsa.RSAPrivateKey = field(default_factory=new_rsa_key)
    broken_pem: str = field(default_factory=lambda: base64.b64encode(os.urandom(48)).decode())
    kek: bytes = field(default_factory=lambda: os.urandom(32))
    api: dict[str, str] = field(
        default_factory=lambda: {
            name: _token()
            for name in (
                "openai",
                "openai-wrong",
                "anthropic",
                "anthropic-wrong",
                "gemini",
                "gemini-wrong",
                "azure",
                "azure-wrong",
                "bedrock-secret",
                "bedrock-wrong-secret",
                "bedrock-session",
            )
        }
    )

    def all(self) -> dict[str, str]:
        found = dict(self.api)
        for name, key in (("vertex", self.vertex_key), ("vertex-unknown", self.unknown_key)):
            found |= {f"{name} private key line {i}": s for i, s in enumerate(_pem_lines(key))}
        found["vertex-broken private key"] = self.broken_pem
        found["kek"] = base64.b64encode(self.kek).decode()
        return found


@dataclass
class Fakes:
    openai: OpenAIFake
    anthropic: AnthropicFake
    gemini: GeminiFake
    azure: AzureOpenAIFake
    vertex: VertexFake
    bedrock: BedrockFake

    def all(self) -> list[FakeProvider]:
        return [self.openai, self.anthropic, self.gemini, self.azure, self.vertex, self.bedrock]

    def requests(self) -> list[LoggedRequest]:
        return [logged for fake in self.all() for logged in fake.requests] + list(
            self.vertex.token_requests
        )


@dataclass
class Canary:
    system: System
    fakes: Fakes
    keys: Keys
    tenant_id: str
    api_key: str
    responses: list[str] = field(default_factory=list)

    def client(self) -> httpx.Client:
        return recording_client(self.system, self.api_key, self.responses)


@pytest.fixture(scope="module", params=BACKENDS)
def canary(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Canary]:
    keys = Keys()
    workdir = tmp_path_factory.mktemp(f"canary-{request.param}")
    fakes = Fakes(
        openai=OpenAIFake(keys.api["openai"], echo_key=True),
        anthropic=AnthropicFake(keys.api["anthropic"], echo_key=True),
        gemini=GeminiFake(keys.api["gemini"], echo_key=True),
        azure=AzureOpenAIFake(
            keys.api["azure"], deployments={AZURE_DEPLOYMENT: "gpt-4o-mini"}, echo_key=True
        ),
        vertex=VertexFake(keys.vertex_key.public_key()),
        bedrock=BedrockFake(
            _token(),
            keys={BEDROCK_KEY_ID: keys.api["bedrock-secret"]},
            session_tokens={BEDROCK_KEY_ID: keys.api["bedrock-session"]},
        ),
    )
    with (
        fakes.openai.serve(),
        fakes.anthropic.serve(),
        fakes.gemini.serve(),
        fakes.azure.serve(),
        fakes.vertex.serve(),
        fakes.bedrock.serve(),
    ):
        endpoints = {
            "openai": fakes.openai.url,
            "anthropic": fakes.anthropic.url,
            "gemini": fakes.gemini.url,
            "vertex": fakes.vertex.url,
            "bedrock": fakes.bedrock.url,
        }
        with running_system(
            request,
            workdir,
            endpoints,
            [POOL],
            log_level="DEBUG",
            kek=f"canary:{base64.b64encode(keys.kek).decode()}",
        ) as system:
            tenant_id, api_key = new_tenant_with_id(system, f"canary-{request.param}")
            yield Canary(system, fakes, keys, tenant_id, api_key)


def _credentials(canary: Canary) -> dict[str, dict[str, Any]]:
    keys, fakes = canary.keys, canary.fakes
    token_uri = f"{fakes.vertex.url}/token"
    broken_pem = f"-----BEGIN PRIVATE KEY-----\n{keys.broken_pem}\n-----END PRIVATE KEY-----\n"
    broken = service_account_info(keys.vertex_key, token_uri) | {"private_key": broken_pem}
    azure: dict[str, Any] = {
        "provider": "azure_openai",
        "endpoint": fakes.azure.url,
        "api_version": "2024-10-21",
        "deployments": {"gpt-4o-mini": AZURE_DEPLOYMENT},
    }
    bedrock_keys = {
        "provider": "bedrock",
        "region": "us-east-1",
        "access_key_id": BEDROCK_KEY_ID,
        "session_token": keys.api["bedrock-session"],
    }
    return {
        "openai": {"provider": "openai", "api_key": keys.api["openai"]},
        "openai-wrong": {"provider": "openai", "api_key": keys.api["openai-wrong"]},
        # Pasted from a file: the key and a newline. It must neither break the call nor leak.
        "openai-pasted": {"provider": "openai", "api_key": keys.api["openai"] + "\n"},
        "anthropic": {"provider": "anthropic", "api_key": keys.api["anthropic"]},
        "anthropic-wrong": {"provider": "anthropic", "api_key": keys.api["anthropic-wrong"]},
        "gemini": {"provider": "gemini", "api_key": keys.api["gemini"]},
        "gemini-wrong": {"provider": "gemini", "api_key": keys.api["gemini-wrong"]},
        "azure": azure | {"api_key": keys.api["azure"]},
        "azure-wrong": azure | {"api_key": keys.api["azure-wrong"]},
        "vertex": {
            "provider": "vertex",
            "service_account": service_account_info(keys.vertex_key, token_uri),
            "region": "us-central1",
        },
        "vertex-unknown": {
            "provider": "vertex",
            "service_account": service_account_info(keys.unknown_key, token_uri),
            "region": "us-central1",
        },
        "vertex-broken": {"provider": "vertex", "service_account": broken},
        "bedrock": bedrock_keys | {"secret_access_key": keys.api["bedrock-secret"]},
        "bedrock-wrong": bedrock_keys | {"secret_access_key": keys.api["bedrock-wrong-secret"]},
    }


#: Each credential's test call: ok (None) or the error class it reports.
TEST_OUTCOMES: dict[str, str | None] = {
    "openai": None,
    "openai-wrong": "auth_failed",
    "openai-pasted": None,
    "anthropic": None,
    "anthropic-wrong": "auth_failed",
    "gemini": None,
    "gemini-wrong": "auth_failed",
    "azure": None,
    "azure-wrong": "auth_failed",
    "vertex": None,
    "vertex-unknown": "auth_failed",
    "vertex-broken": "auth_failed",
    "bedrock": None,
    "bedrock-wrong": "auth_failed",
}


def _put_credentials(canary: Canary, client: httpx.Client) -> None:
    for name, body in _credentials(canary).items():
        put = client.put(f"/v1/credentials/{name}", json=body)
        assert put.status_code == 200, put.text


def _refused_puts(canary: Canary, client: httpx.Client) -> None:
    """Bodies the API refuses, each carrying secrets: the refusal must not quote them."""
    keys, token_uri = canary.keys, f"{canary.fakes.vertex.url}/token"
    account = service_account_info(keys.vertex_key, token_uri)
    refused = {
        "no-token-uri": {
            "provider": "vertex",
            "service_account": {k: v for k, v in account.items() if k != "token_uri"},
        },
        "foreign-token-host": {
            "provider": "vertex",
            "service_account": account | {"token_uri": "https://tokens.example.com/token"},
        },
        "not-a-key-json": {"provider": "vertex", "service_account": account | {"type": "user"}},
        "bad-region": {
            "provider": "bedrock",
            "region": "mars-north-1",
            "access_key_id": BEDROCK_KEY_ID,
            "secret_access_key": keys.api["bedrock-secret"],
        },
        "extra-field": {
            "provider": "anthropic",
            "api_key": keys.api["anthropic"],
            "backup_key": keys.api["anthropic"],
        },
        "unknown-provider": {"provider": "openia", "api_key": keys.api["openai"]},
        "number-key": {"provider": "gemini", "api_key": 12345678, "note": keys.api["gemini"]},
    }
    for name, body in refused.items():
        response = client.put(f"/v1/credentials/{name}", json=body)
        assert response.status_code == 422, (name, response.text)
    truncated = b'{"provider": "openai", "api_key": "' + keys.api["openai"].encode()
    malformed = client.put("/v1/credentials/malformed", content=truncated)
    assert malformed.status_code == 400, malformed.text


def _routed_runs(canary: Canary, client: httpx.Client) -> list[str]:
    """Runs submitted through POST /v1/run that fall back past refusals to a success."""
    routing = {
        "rules": [
            {
                "match": "openai/*",
                "hops": [
                    {"provider": "openai", "credential": "byok:openai-wrong"},
                    {"provider": "azure_openai", "credential": "byok:azure"},
                ],
            },
            {
                "match": "google/*",
                "hops": [
                    {"provider": "vertex", "credential": "byok:vertex"},
                    {"provider": "gemini", "credential": "byok:gemini-wrong"},
                    {"provider": "gemini", "credential": "byok:gemini"},
                ],
            },
            {
                "match": "anthropic/*",
                "hops": [
                    {"provider": "anthropic", "credential": "byok:anthropic-wrong"},
                    {"provider": "bedrock", "credential": "byok:bedrock-wrong"},
                    {"provider": "bedrock", "credential": "byok:bedrock"},
                ],
            },
        ]
    }
    saved = client.put("/v1/routing", json=routing)
    assert saved.status_code == 200, saved.text
    canary.fakes.vertex.script(gemini.rate_limited(retry_delay=None))
    expected = {
        "openai/gpt-4o-mini": ["auth_failed", None],
        "google/gemini-2.5-pro": ["rate_limited", "auth_failed", None],
        "anthropic/claude-sonnet-4": ["auth_failed", "auth_failed", None],
    }
    run_ids = []
    for app, classes in expected.items():
        accepted = client.post("/v1/run", json={"app": app, "input": {"prompt": "canary run"}})
        assert accepted.status_code == 202, accepted.text
        run = wait_for_run(client, accepted.json()["id"], timeout_s=60)
        assert run["status"] == "succeeded", (app, run)
        assert [a["error_class"] for a in run["attempts"]] == classes, (app, run["attempts"])
        run_ids.append(run["id"])
    return run_ids


def _credential_tests(client: httpx.Client) -> list[str]:
    run_ids = []
    for name, error_class in TEST_OUTCOMES.items():
        tested = client.post(f"/v1/credentials/{name}/test")
        assert tested.status_code == 200, tested.text
        body = tested.json()
        assert (body["ok"], body["error_class"]) == (error_class is None, error_class), (name, body)
        run_ids.append(body["run_id"])
    return run_ids


def _scripted_failures(canary: Canary, client: httpx.Client) -> list[str]:
    """Providers' own error bodies (not echoing keys) through the test call as well."""
    fakes = canary.fakes
    fakes.openai.script(openai.server_error(500))
    fakes.bedrock.script(bedrock.aws_error("ThrottlingException"))
    fakes.vertex.script(gemini.unavailable())
    run_ids = []
    for name, error_class in (
        ("openai", "provider_error"),
        ("bedrock", "rate_limited"),
        ("vertex", "overloaded"),
    ):
        body = client.post(f"/v1/credentials/{name}/test").json()
        assert (body["ok"], body["error_class"]) == (False, error_class), (name, body)
        run_ids.append(body["run_id"])
    return run_ids


def _dead_letter(canary: Canary) -> None:
    """A message the actor cannot take (no hop index) fails and lands in the dead-letter queue,
    with its traceback: the scan must cover it."""
    settings = canary.system.settings
    broker = make_broker(settings, settings.locate_redis())
    try:
        broker.enqueue(
            dramatiq.Message(
                queue_name=queue_name("simulated"),
                actor_name=actor_name("simulated"),
                args=(DEAD_LETTER_MARK,),
                kwargs={},
                options={},
            )
        )
    finally:
        broker.close()
    client = redis.Redis.from_url(settings.locate_redis())
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            dead = client.hgetall(f"{settings.redis_namespace}:{queue_name('simulated')}.XQ.msgs")
            if any(DEAD_LETTER_MARK.encode() in value for value in dead.values()):
                return
            time.sleep(0.1)
    finally:
        client.close()
    raise AssertionError("the message was not dead-lettered")


def test_no_secret_reaches_a_log_the_queue_the_store_or_an_api_response(canary: Canary) -> None:
    with canary.client() as client:
        _refused_puts(canary, client)
        _put_credentials(canary, client)
        run_ids = _routed_runs(canary, client)
        run_ids += _credential_tests(client)
        run_ids += _scripted_failures(canary, client)
        listed = client.get("/v1/credentials").json()["data"]
        assert {c["name"] for c in listed if not c["healthy"]} >= {"openai-wrong", "vertex-broken"}
        for run_id in run_ids:
            client.get(f"/v1/runs/{run_id}")
        client.get("/v1/runs", params={"limit": 100})
        client.get("/v1/usage", params={"group_by": "provider,credential_kind"})
    _dead_letter(canary)
    canary.system.stop()  # every line flushed, shutdown included

    secrets_ = canary.keys.all() | {
        f"vertex access token {i}": token
        for i, token in enumerate(sorted(canary.fakes.vertex.issued))
    }
    settings = canary.system.settings
    places = {
        "logs": log_dump(canary.system.workdir),
        "redis": redis_dump(settings.locate_redis()),
        "store": store_dump(canary.system.engine),
        "API responses": "\n\n".join(canary.responses),
    }
    # The places hold what they should: a blind search would pass on empty text.
    for place, text in places.items():
        assert all(run_id in text for run_id in run_ids[:3]), f"{place} lacks the runs"
    assert "attempt recorded" in places["logs"]
    assert f"{queue_name('simulated')}.XQ.msgs (hash): " in places["redis"]
    assert DEAD_LETTER_MARK in places["redis"]
    assert "credential: " in places["store"] and "datakey: " in places["store"]
    # The same search finds every key the workers sent in the fakes' request logs.
    sent = {
        name: canary.keys.api[name]
        for name in ("openai", "openai-wrong", "anthropic-wrong", "gemini", "azure-wrong")
    } | {"bedrock-session": canary.keys.api["bedrock-session"]}
    seen = "\n".join(str(logged.headers) for logged in canary.fakes.requests())
    assert len(leaks(sent, {"fake providers": seen})) == len(sent)
    assert len(canary.fakes.vertex.issued) >= 1

    found = leaks(secrets_, places)
    assert not found, "secrets leaked:\n" + "\n".join(found)


LOGGING_SCRIPT = """
import logging, sys
import structlog
from dispatcher import log

log.configure(sys.argv[1], "DEBUG")
secret, pem = sys.argv[2], sys.argv[3]
logging.getLogger("botocore.auth").debug("CanonicalRequest:\\nx-amz-security-token:%s", secret)
logging.getLogger("httpx").info("HTTP Request: POST https://x/v1?key=%s", secret)
logging.getLogger("some.client").debug("headers: {'Authorization': 'Bearer %s'}", secret)
logging.getLogger("some.client").debug("x-amz-security-token:%s", secret)
structlog.get_logger("t").info("calling", api_key=secret, headers={"x-goog-api-key": secret})
structlog.get_logger("t").info("key json", account={"private_key": pem}, text=pem)
try:
    raise ValueError(f"Illegal header value b'Bearer {secret}'")
except ValueError:
    structlog.get_logger("t").exception("call failed")
logging.getLogger("t").info("token ya29.%s issued", secret)
"""


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_log_lines_mask_credentials_whoever_writes_them(log_format: str) -> None:
    """Library loggers that write headers or signing material at DEBUG stay quiet, and every
    line (structlog's and the standard library's, tracebacks included) is redacted."""
    secret = _token()
    key = new_rsa_key()
    pem = str(service_account_info(key, "")["private_key"])
    done = subprocess.run(
        [sys.executable, "-c", LOGGING_SCRIPT, log_format, secret, pem],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    written = done.stderr
    assert "calling" in written and "call failed" in written and "Traceback" in written
    assert "key json" in written and "issued" in written
    found = leaks(
        {"secret": secret} | {f"pem line {i}": line for i, line in enumerate(_pem_lines(key))},
        {"stderr": written},
    )
    assert not found, "\n".join(found)
