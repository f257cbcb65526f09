"""``/v1/credentials``: secrets go in and never come out; tenant hosts are allow-listed."""

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from dispatcher.services import Services
from dispatcher.store.credentials import load_secret
from tests.dispatcher.conftest import new_tenant

SECRET = "sk-canary-0123456789abcdefXYZ9"


def _no_secret(text: str) -> None:
    assert SECRET not in text and SECRET[:8] not in text


def test_a_credential_is_stored_encrypted_and_shown_as_metadata_only(
    api: TestClient, services: Services
) -> None:
    tenant_id, auth = new_tenant(services, "acme")
    put = api.put(
        "/v1/credentials/main", json={"provider": "openai", "api_key": SECRET}, headers=auth
    )
    assert put.status_code == 200, put.text
    shown = put.json()
    assert (shown["name"], shown["provider"], shown["fingerprint"], shown["healthy"]) == (
        "main",
        "openai",
        "…XYZ9",
        True,
    )
    for response in (
        put,
        api.get("/v1/credentials", headers=auth),
        api.get("/v1/credentials/main", headers=auth),
    ):
        _no_secret(response.text)
    with Session(services.engine) as session:
        secret = load_secret(session, services.keyring, tenant_id, "main")
    assert secret is not None and secret.api_key.get_secret_value() == SECRET  # type: ignore[union-attr]


def test_delete_revokes_at_once_and_another_tenant_sees_nothing(
    api: TestClient, services: Services
) -> None:
    tenant_id, auth = new_tenant(services, "acme")
    _, other = new_tenant(services, "globex")
    api.put("/v1/credentials/main", json={"provider": "anthropic", "api_key": SECRET}, headers=auth)
    assert api.get("/v1/credentials/main", headers=other).status_code == 404
    assert api.delete("/v1/credentials/main", headers=other).status_code == 404
    assert api.delete("/v1/credentials/main", headers=auth).status_code == 204
    assert api.get("/v1/credentials/main", headers=auth).status_code == 404
    with Session(services.engine) as session:
        assert load_secret(session, services.keyring, tenant_id, "main") is None


@pytest.mark.parametrize(
    "body",
    [
        {"provider": "openai", "api_key": SECRET, "base_url": "https://evil.example.com"},
        {"provider": "openai", "api_key": SECRET, "base_url": "http://169.254.169.254"},
        {
            "provider": "azure_openai",
            "api_key": SECRET,
            "endpoint": "https://attacker.net/openai.azure.com",
        },
    ],
)
def test_tenant_supplied_hosts_off_the_allow_list_are_refused(
    api: TestClient, services: Services, body: dict[str, str]
) -> None:
    _, auth = new_tenant(services, "acme")
    response = api.put("/v1/credentials/x", json=body, headers=auth)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "endpoint_not_allowed"
    _no_secret(response.text)
    assert api.get("/v1/credentials", headers=auth).json()["data"] == []


def test_an_allowed_azure_endpoint_is_accepted(api: TestClient, services: Services) -> None:
    _, auth = new_tenant(services, "acme")
    body = {
        "provider": "azure_openai",
        "api_key": SECRET,
        "endpoint": "https://acme.openai.azure.com",
    }
    assert api.put("/v1/credentials/az", json=body, headers=auth).status_code == 200


def test_a_malformed_credential_is_refused_without_echoing_the_secret(
    api: TestClient, services: Services
) -> None:
    _, auth = new_tenant(services, "acme")
    for body in (
        {"provider": "openai", "api_key": SECRET, "colour": "red"},
        {"provider": "nope", "api_key": SECRET},
        {"provider": "bedrock", "region": "us-east-1", "secret_access_key": SECRET},
    ):
        response = api.put("/v1/credentials/bad", json=body, headers=auth)
        assert response.status_code == 422, body
        _no_secret(response.text)


def test_a_bad_name_is_refused(api: TestClient, services: Services) -> None:
    _, auth = new_tenant(services, "acme")
    response = api.put(
        "/v1/credentials/has%20space", json={"provider": "gemini", "api_key": SECRET}, headers=auth
    )
    assert response.status_code == 422
