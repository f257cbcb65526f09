"""``/v1/credentials``: a tenant's own provider keys. Secrets go in, never come out.

Every change is announced (``services.changes``) once committed, so the next submit of every
API process routes with it. The vault (and ``cryptography`` with it) is imported by the first
request that needs it: the submit path never does.
"""

import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from sqlmodel import Session

from dispatcher.api.deps import ServicesDep, TenantDep
from dispatcher.api.errors import ApiError
from dispatcher.hosts import url_allowed
from dispatcher.intake import QueueUnavailable, Submission
from dispatcher.models import Attempt, Run
from dispatcher.services import Services
from dispatcher.store import runs
from schemas.credentials import (
    AzureOpenAICredential,
    CredentialPublic,
    CredentialSecret,
    OpenAICredential,
    VertexCredential,
)
from schemas.hops import Hop
from schemas.runs import TERMINAL_STATUSES

router = APIRouter(prefix="/v1/credentials", tags=["credentials"])

TEST_TIMEOUT_S = 30.0
TEST_INPUT = {"prompt": "Reply with the word ok.", "max_tokens": 5}


class CredentialList(BaseModel):
    data: list[CredentialPublic]


class CredentialTest(BaseModel):
    ok: bool
    run_id: str
    error_class: str | None = None
    message: str | None = None
    status_code: int | None = None


@router.put("/{name}", response_model=CredentialPublic)
def put_credential(
    name: str,
    secret: Annotated[CredentialSecret, Body()],
    tenant_id: TenantDep,
    services: ServicesDep,
) -> CredentialPublic:
    """Create or replace credential ``name``; the body's shape depends on ``provider``."""
    from dispatcher.store import credentials as store

    _check_name(name)
    _check_endpoints(secret, services)
    with Session(services.engine) as session:
        public = store.put_credential(session, services.keyring, tenant_id, name, secret)
        session.commit()
    services.changes.announce(tenant_id)
    return public


@router.get("", response_model=CredentialList)
def list_credentials(tenant_id: TenantDep, services: ServicesDep) -> CredentialList:
    from dispatcher.store import credentials as store

    with Session(services.engine) as session:
        return CredentialList(data=store.list_credentials(session, tenant_id))


@router.get("/{name}", response_model=CredentialPublic)
def get_credential(name: str, tenant_id: TenantDep, services: ServicesDep) -> CredentialPublic:
    return _get(services, tenant_id, name)


@router.delete("/{name}", status_code=204)
def delete_credential(name: str, tenant_id: TenantDep, services: ServicesDep) -> Response:
    """Revoke at once: runs that reach this credential afterwards no longer use it."""
    from dispatcher.store import credentials as store

    with Session(services.engine) as session:
        if not store.delete_credential(session, tenant_id, name):
            raise ApiError(404, "not_found", f"no credential {name!r}")
        session.commit()
    services.changes.announce(tenant_id)
    return Response(status_code=204)


@router.post("/{name}/test", response_model=CredentialTest)
async def test_credential(name: str, tenant_id: TenantDep, services: ServicesDep) -> CredentialTest:
    """One small real call with this credential, as a run pinned to it; its outcome."""
    credential = await run_in_threadpool(_get, services, tenant_id, name)
    run_id = await _start_test_run(services, tenant_id, name, credential.provider)
    run, attempts = await run_in_threadpool(_wait_terminal, services, tenant_id, run_id)
    if run.status == "succeeded":
        return CredentialTest(ok=True, run_id=run_id)
    error: dict[str, Any] = run.error or {}
    last = attempts[-1] if attempts else None
    return CredentialTest(
        ok=False,
        run_id=run_id,
        error_class=last.error_class if last else error.get("code"),
        message=error.get("message", f"the test run ended {run.status}"),
        status_code=error.get("status_code"),
    )


def _get(services: Services, tenant_id: str, name: str) -> CredentialPublic:
    from dispatcher.store import credentials as store

    with Session(services.engine) as session:
        return _found(store.get_credential(session, tenant_id, name), name)


async def _start_test_run(services: Services, tenant_id: str, name: str, provider: str) -> str:
    app, model = _test_app(services, provider)
    hop = Hop(provider=provider, credential=f"byok:{name}", model=model, timeout_s=20)
    run = runs.new_run(
        tenant_id=tenant_id, app=app, input=TEST_INPUT, chain=runs.chain_snapshot([hop]),
        requeue_after_s=services.settings.requeue_after_s, meta={"purpose": "credential_test"},
    )  # fmt: skip
    try:
        await services.intake.submit(Submission([run]))
    except QueueUnavailable:
        raise ApiError(503, "queue_unavailable", "the queue is not answering; try again") from None
    return run.id


def _wait_terminal(services: Services, tenant_id: str, run_id: str) -> tuple[Run, list[Attempt]]:
    deadline = time.monotonic() + TEST_TIMEOUT_S
    while True:
        with Session(services.engine) as session:
            run = runs.get_run(session, tenant_id, run_id)
            assert run is not None
            if run.status in TERMINAL_STATUSES or time.monotonic() > deadline:
                return run, runs.attempts_of(session, [run_id])[run_id]
        time.sleep(0.05)


def _test_app(services: Services, provider: str) -> tuple[str, str]:
    for app, models in sorted(services.catalog.apps.items()):
        if provider in models:
            return app, models[provider]
    raise ApiError(422, "no_test_app", f"the catalog has no app served by {provider!r}")


def _found(credential: CredentialPublic | None, name: str) -> CredentialPublic:
    if credential is None:
        raise ApiError(404, "not_found", f"no credential {name!r}")
    return credential


def _check_name(name: str) -> None:
    if not (0 < len(name) <= 64 and name.replace("-", "").replace("_", "").isalnum()):
        raise ApiError(422, "invalid_name", "a credential name is 1-64 letters, digits, - or _")


def _check_endpoints(secret: CredentialSecret, services: Services) -> None:
    """Tenant-supplied hosts must be on the operator's allow-lists."""
    settings = services.settings
    checks: list[tuple[str, str | None, list[str]]] = []
    if isinstance(secret, OpenAICredential):
        checks.append(("base_url", secret.base_url, settings.provider_hosts))
    if isinstance(secret, AzureOpenAICredential):
        checks.append(("endpoint", secret.endpoint, settings.provider_hosts))
    if isinstance(secret, VertexCredential):
        token_uri = secret.service_account.get("token_uri")
        checks.append(("service_account.token_uri", token_uri, settings.token_hosts))
    for field, url, allowed in checks:
        if url is not None and not url_allowed(url, allowed):
            raise ApiError(
                422, "endpoint_not_allowed", f"{field}: this host is not on the allow-list",
                {"field": field, "allowed": allowed},
            )  # fmt: skip
