"""A chain Vertex (BYOK) -> Bedrock (BYOK) -> shared, end to end through the real queue.

One worker pool process per provider, as deployed: a run refused by the tenant's Vertex
project (429 RESOURCE_EXHAUSTED, or 503 UNAVAILABLE) moves through Redis to the Bedrock pool,
is throttled there with the tenant's AWS keys, and is served by the shared simulated pool.
The fakes check the real authentication: the Vertex fake accepts only access tokens its Google
token endpoint minted for a JWT signed with the tenant's service-account key; the Bedrock fake
recomputes the SigV4 signature with botocore from the tenant's secret before it answers at all.

No app of the catalog is served by Vertex, Bedrock and the simulated provider alike, so no
routing config can produce this chain: the run is stored with the chain as its snapshot (as the
API stores a routed run) and its first hop enqueued on the real queue.
"""

import base64
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from schemas.hops import SHARED, Hop
from tests.fakes import gemini
from tests.fakes.bedrock import BedrockFake, aws_error
from tests.fakes.common import FakeProvider, Reply
from tests.fakes.google import EMAIL, VertexFake, new_rsa_key, service_account_info
from tests.support.byok import BACKENDS, new_tenant_with_id, running_system, submit_pinned
from tests.support.system import System, wait_for_run

pytestmark = pytest.mark.e2e

APP = "google/gemini-2.5-pro"
BEDROCK_MODEL = "anthropic.claude-sonnet-4-20250514-v1:0"
KEY_ID = "AKIATENANTCHAIN00001"


@dataclass
class Cloud:
    system: System
    vertex: VertexFake
    bedrock: BedrockFake
    service_account_key: rsa.RSAPrivateKey
    aws_secret: str

    def tenant(self) -> tuple[str, httpx.Client]:
        """A new tenant holding the service account (``gcp``) and the AWS keys (``aws``)."""
        tenant_id, key = new_tenant_with_id(self.system, f"cloud-{secrets.token_hex(4)}")
        client = self.system.client(key)
        account = service_account_info(self.service_account_key, f"{self.vertex.url}/token")
        # Its own key id: worker processes cache access tokens per key, and each tenant's run
        # must show its own token grant.
        account["private_key_id"] = secrets.token_hex(20)
        credentials: dict[str, dict[str, Any]] = {
            "gcp": {"provider": "vertex", "service_account": account, "region": "us-central1"},
            "aws": {
                "provider": "bedrock",
                "region": "us-east-1",
                "access_key_id": KEY_ID,
                "secret_access_key": self.aws_secret,
            },
        }
        for name, body in credentials.items():
            put = client.put(f"/v1/credentials/{name}", json=body)
            assert put.status_code == 200, put.text
        return tenant_id, client

    def run(self, tenant_id: str, client: httpx.Client, prompt: str) -> Any:
        chain = [
            Hop(provider="vertex", credential="byok:gcp", model="gemini-2.5-pro", timeout_s=20),
            Hop(provider="bedrock", credential="byok:aws", model=BEDROCK_MODEL, timeout_s=20),
            Hop(provider="simulated", credential=SHARED, model="echo", timeout_s=20),
        ]
        run_id = submit_pinned(self.system, tenant_id, APP, {"prompt": prompt}, chain)
        run = wait_for_run(client, run_id, timeout_s=60)
        assert run["status"] == "succeeded", (run, self.system.logs())
        return run


@pytest.fixture(scope="module", params=BACKENDS)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cloud]:
    workdir = tmp_path_factory.mktemp(f"cloud-{request.param}")
    key, aws_secret = new_rsa_key(), secrets.token_urlsafe(30)
    pools = [("vertex",), ("bedrock",), ("simulated",)]  # one process each, as deployed
    with (
        VertexFake(key.public_key()).serve() as vertex,
        BedrockFake(secrets.token_urlsafe(16), keys={KEY_ID: aws_secret}).serve() as bedrock,
        running_system(
            request, workdir, {"vertex": vertex.url, "bedrock": bedrock.url}, pools
        ) as system,
    ):
        yield Cloud(system, vertex, bedrock, key, aws_secret)


@pytest.fixture
def cloud(served: Cloud) -> Cloud:
    """The fakes with empty logs and scripts. The Vertex fake keeps honouring the tokens it
    minted (``VertexFake.reset`` forgets them): the worker process still holds them."""
    FakeProvider.reset(served.vertex)
    served.vertex.token_requests.clear()
    served.bedrock.reset()
    return served


def _claims(assertion: str) -> Any:
    payload = assertion.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _outcomes(run: Any) -> list[tuple[str, str, str | None, int | None]]:
    return [
        (a["provider"], a["credential_kind"], a["error_class"], a["status_code"])
        for a in run["attempts"]
    ]


@pytest.mark.parametrize(
    ("vertex_reply", "vertex_outcome"),
    [
        (gemini.rate_limited(retry_delay=None), ("rate_limited", 429)),
        (gemini.unavailable(), ("overloaded", 503)),
    ],
    ids=["vertex-429", "vertex-503"],
)
def test_a_run_falls_back_from_vertex_to_bedrock_to_the_shared_pool(
    cloud: Cloud, vertex_reply: Reply, vertex_outcome: tuple[str, int]
) -> None:
    tenant_id, client = cloud.tenant()
    cloud.vertex.script(vertex_reply)
    cloud.bedrock.script(aws_error("ThrottlingException"))

    run = cloud.run(tenant_id, client, "three hops away")

    assert _outcomes(run) == [
        ("vertex", "byok", *vertex_outcome),
        ("bedrock", "byok", "rate_limited", 429),
        ("simulated", "shared", None, 200),
    ]
    assert (run["provider"], run["credential_kind"]) == ("simulated", "shared")
    assert run["output"]["text"] == "three hops away"
    assert run["usage"]["input_tokens"] > 0 and run["cost_usd"] > 0
    assert [a["cost_usd"] for a in run["attempts"][:2]] == [0, 0]

    # Vertex saw a token its token endpoint minted from a JWT signed with the tenant's key.
    [grant] = cloud.vertex.token_requests
    assert _claims(grant.json["assertion"])["iss"] == EMAIL
    [call] = cloud.vertex.requests
    assert call.headers["authorization"].removeprefix("Bearer ") in cloud.vertex.issued
    assert call.path.startswith("/v1/projects/tenant-project/locations/us-central1/")
    # Bedrock checked the SigV4 signature of the tenant's keys before throttling the call.
    [signed] = cloud.bedrock.requests
    assert signed.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={KEY_ID}/")
    assert "/us-east-1/bedrock/aws4_request" in signed.headers["authorization"]
    assert cloud.bedrock.raw_paths == ["/model/anthropic.claude-sonnet-4-20250514-v1%3A0/converse"]


def test_a_healthy_vertex_hop_serves_the_run_with_its_usage_and_cost(cloud: Cloud) -> None:
    tenant_id, client = cloud.tenant()

    run = cloud.run(tenant_id, client, "first hop")

    assert _outcomes(run) == [("vertex", "byok", None, 200)]
    assert run["output"]["text"] == "first hop"
    usage = run["usage"]  # the fake's usageMetadata: 1100 prompt (1024 cached), 40 + 96 thoughts
    assert (usage["input_tokens"], usage["output_tokens"]) == (1100, 136)
    assert (usage["cached_input_tokens"], usage["reasoning_tokens"]) == (1024, 96)
    # gemini-2.5-pro on Vertex: $1.25 per million input tokens, $10 per million output tokens.
    assert run["cost_usd"] == pytest.approx(0.002735)
    assert cloud.bedrock.requests == []


def test_a_wrong_aws_secret_is_refused_by_the_signature_check_and_the_run_moves_on(
    cloud: Cloud,
) -> None:
    """The Bedrock fake really checks signatures: keys that do not match fail as auth."""
    tenant_id, client = cloud.tenant()
    wrong = {
        "provider": "bedrock",
        "region": "us-east-1",
        "access_key_id": KEY_ID,
        "secret_access_key": secrets.token_urlsafe(30),
    }
    assert client.put("/v1/credentials/aws", json=wrong).status_code == 200
    cloud.vertex.script(gemini.unavailable())

    run = cloud.run(tenant_id, client, "signed wrong")

    assert _outcomes(run) == [
        ("vertex", "byok", "overloaded", 503),
        ("bedrock", "byok", "auth_failed", 403),
        ("simulated", "shared", None, 200),
    ]
    assert "InvalidSignatureException" in run["attempts"][1]["message"]
    assert client.get("/v1/credentials/aws").json()["healthy"] is False
