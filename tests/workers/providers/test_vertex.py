"""Vertex AI against the fake Google token endpoint and Vertex endpoint over loopback HTTP:
the service-account JWT grant, the token cache, the token_uri allow-list, generateContent and
Google's error bodies."""

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from dispatcher.settings import Settings
from schemas.credentials import VertexCredential
from schemas.inference import InferenceResult
from tests.fakes import gemini
from tests.fakes.google import VertexFake, google_reply, new_rsa_key, service_account_info
from tests.workers.providers import call, chat, failure, loopback, summary
from workers.providers.errors import ProviderError
from workers.providers.google_auth_transport import ServiceAccountTokens
from workers.providers.vertex import VertexAdapter

KEY = new_rsa_key()  # 2048-bit keys take a moment: one for the module
MODEL = "gemini-2.5-flash"


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def served() -> Iterator[VertexFake]:
    with VertexFake(KEY.public_key()).serve() as fake:
        yield fake


@pytest.fixture
def fake(served: VertexFake) -> VertexFake:
    return served.reset()


@pytest.fixture
def settings(fake: VertexFake) -> Settings:
    return loopback(vertex=fake.url).model_copy(update={"token_hosts": ["127.0.0.1"]})


def credential(fake: VertexFake, key: rsa.RSAPrivateKey = KEY, **info: Any) -> VertexCredential:
    account = service_account_info(key, f"{fake.url}/token") | info
    return VertexCredential(service_account=account, region="us-central1")


def test_a_correctly_signed_jwt_gets_a_token_and_the_call_succeeds(
    fake: VertexFake, settings: Settings
) -> None:
    result = call(VertexAdapter, settings, chat(MODEL, prompt="hi there"), credential(fake))

    assert result.output == {"text": "hi there", "finish_reason": "stop", "model": MODEL}
    assert result.usage.input_tokens == 1100
    assert result.usage.output_tokens == 40 + 96  # candidates + thoughts
    assert result.usage.cached_input_tokens == 1024
    [token_call] = fake.token_requests
    assert token_call.json["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert fake.last.path == (
        "/v1/projects/tenant-project/locations/us-central1"
        f"/publishers/google/models/{MODEL}:generateContent"
    )
    assert fake.last.headers["authorization"].startswith("Bearer ya29.fake-")


def test_the_credential_project_and_the_hop_region_win(
    fake: VertexFake, settings: Settings
) -> None:
    other = credential(fake).model_copy(update={"project": "other-project"})
    call(VertexAdapter, settings, chat(MODEL).model_copy(update={"region": "europe-west4"}), other)

    assert fake.last.path.startswith("/v1/projects/other-project/locations/europe-west4/")


def test_a_jwt_signed_with_another_key_is_refused_as_auth_failed(
    fake: VertexFake, settings: Settings
) -> None:
    error = failure(VertexAdapter, settings, chat(MODEL), credential(fake, new_rsa_key()))

    assert error.error_class == "auth_failed"
    assert "invalid_grant" in error.message
    assert len(fake.token_requests) == 1
    assert fake.requests == []


def test_one_token_request_serves_many_concurrent_calls(
    fake: VertexFake, settings: Settings
) -> None:
    async def run() -> list[InferenceResult]:
        adapter = VertexAdapter(settings)
        try:
            calls = (adapter.invoke(chat(MODEL), credential(fake)) for _ in range(20))
            return await asyncio.gather(*calls)
        finally:
            await adapter.aclose()

    assert len(asyncio.run(run())) == 20
    assert len(fake.token_requests) == 1
    assert len({logged.headers["authorization"] for logged in fake.requests}) == 1


def test_a_token_is_refreshed_shortly_before_it_expires(
    fake: VertexFake, settings: Settings
) -> None:
    clock = Clock()
    adapter = VertexAdapter(settings, tokens=ServiceAccountTokens(["127.0.0.1"], clock=clock))

    async def run() -> None:
        try:
            await adapter.invoke(chat(MODEL), credential(fake))
            clock.now += 3000  # 10 minutes left of the hour: still served from the cache
            await adapter.invoke(chat(MODEL), credential(fake))
            clock.now += 400  # within the refresh margin
            await adapter.invoke(chat(MODEL), credential(fake))
        finally:
            await adapter.aclose()

    asyncio.run(run())
    assert len(fake.token_requests) == 2
    first, second, third = (logged.headers["authorization"] for logged in fake.requests)
    assert first == second != third


def test_a_short_lived_token_is_kept_for_half_its_life(
    fake: VertexFake, settings: Settings
) -> None:
    fake.expires_in = 60
    clock = Clock()
    adapter = VertexAdapter(settings, tokens=ServiceAccountTokens(["127.0.0.1"], clock=clock))

    async def run() -> None:
        try:
            for step in (0, 20, 20):  # at 0 and 20 s: cached; at 40 s: refreshed
                clock.now += step
                await adapter.invoke(chat(MODEL), credential(fake))
        finally:
            await adapter.aclose()

    asyncio.run(run())
    assert len(fake.token_requests) == 2


def test_a_token_uri_off_the_allow_list_is_never_contacted(
    fake: VertexFake, settings: Settings
) -> None:
    strict = settings.model_copy(update={"token_hosts": ["oauth2.googleapis.com"]})
    error = failure(VertexAdapter, strict, chat(MODEL), credential(fake))

    assert error.error_class == "auth_failed"
    assert "token_uri host '127.0.0.1'" in error.message
    assert fake.token_requests == []
    assert fake.requests == []


def test_a_token_uri_disguised_with_user_info_is_refused(
    fake: VertexFake, settings: Settings
) -> None:
    sneaky = f"http://127.0.0.1@{fake.url.removeprefix('http://')}/token"
    error = failure(VertexAdapter, settings, chat(MODEL), credential(fake, token_uri=sneaky))

    assert error.error_class == "auth_failed"
    assert fake.token_requests == []


def test_an_unusable_key_json_is_auth_failed(fake: VertexFake, settings: Settings) -> None:
    broken = credential(fake, private_key="-----BEGIN PRIVATE KEY-----\nnope\n")
    error = failure(VertexAdapter, settings, chat(MODEL), broken)

    assert error.error_class == "auth_failed"
    assert fake.token_requests == []


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (gemini.rate_limited(None), ("rate_limited", 429, None)),
        (gemini.rate_limited("37s"), ("rate_limited", 429, 37.0)),
        (gemini.rate_limited("12s", per_day=True), ("quota_exhausted", 429, 12.0)),
        (gemini.unavailable(), ("overloaded", 503, None)),
        (gemini.internal(), ("provider_error", 500, None)),
        (google_reply(400, "INVALID_ARGUMENT", "Bad request."), ("invalid_request", 400, None)),
        (google_reply(403, "PERMISSION_DENIED", "Denied."), ("auth_failed", 403, None)),
        (google_reply(404, "NOT_FOUND", "No such model."), ("invalid_request", 404, None)),
    ],
)
def test_google_errors_map_to_error_classes(
    fake: VertexFake, settings: Settings, reply: Any, expected: tuple[str, int, float | None]
) -> None:
    fake.script(reply)

    assert summary(failure(VertexAdapter, settings, chat(MODEL), credential(fake))) == expected


def test_a_token_the_endpoint_no_longer_honours_is_auth_failed(
    fake: VertexFake, settings: Settings
) -> None:
    async def run() -> None:
        adapter = VertexAdapter(settings)
        try:
            await adapter.invoke(chat(MODEL), credential(fake))
            fake.issued.clear()  # as if the token had been revoked
            await adapter.invoke(chat(MODEL), credential(fake))
        finally:
            await adapter.aclose()

    with pytest.raises(ProviderError) as raised:
        asyncio.run(run())
    assert summary(raised.value) == ("auth_failed", 401, None)


@pytest.mark.parametrize("region", ["us-central1.evil.example", "us central1", "US", "eu\n"])
def test_a_location_that_is_no_host_label_is_refused(
    fake: VertexFake, settings: Settings, region: str
) -> None:
    request = chat(MODEL).model_copy(update={"region": region})
    error = failure(VertexAdapter, settings, request, credential(fake))

    assert error.error_class == "invalid_request"
    assert fake.token_requests == []


@pytest.mark.parametrize(
    ("location", "base"),
    [
        ("global", "https://aiplatform.googleapis.com"),
        ("us-east5", "https://us-east5-aiplatform.googleapis.com"),
    ],
)
def test_the_public_url_follows_the_location(fake: VertexFake, location: str, base: str) -> None:
    adapter = VertexAdapter(Settings())
    url = adapter.url(credential(fake).model_copy(update={"region": location}), chat(MODEL))
    asyncio.run(adapter.aclose())

    assert url == (
        f"{base}/v1/projects/tenant-project/locations/{location}"
        f"/publishers/google/models/{MODEL}:generateContent"
    )
