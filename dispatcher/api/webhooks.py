"""Webhooks: signing secrets (``/v1/webhooks/secrets``), a run's delivery log and redelivery,
and the checks a webhook URL passes at submission.

The webhook store (sealed secrets: the vault, and ``cryptography`` with it) and the URL checks
(DNS, ``httpx``) are imported by the first request that needs them: a plain submit never does.
"""

import redis
import structlog
from fastapi import APIRouter, Response
from sqlmodel import Session

from dispatcher.api.deps import UNAUTHORIZED, ServicesDep, TenantDep
from dispatcher.api.errors import ApiError
from dispatcher.queue import enqueue_delivery
from dispatcher.services import Services
from dispatcher.store import runs as run_store
from schemas.webhooks import (
    DeliveryList,
    DeliveryPublic,
    RotateSecrets,
    WebhookSecretCreated,
    WebhookSecretList,
)

log = structlog.get_logger(__name__)

#: Included by ``dispatcher.api.runs`` (under its ``/v1``).
router = APIRouter(tags=["webhooks"])

_ERRORS = UNAUTHORIZED


def check_webhook(session: Session, services: Services, tenant_id: str, url: str) -> None:
    """Refuse a webhook we would never deliver: an address that is not public (unless settings
    allow it), a tenant with no signing secret, an endpoint that answered 410."""
    from dispatcher.netguard import HostNotFound, UnsafeURL, check_url
    from dispatcher.store import webhooks as store

    try:
        check_url(url, allow_private=services.settings.webhook_allow_private)
    except UnsafeURL as exc:
        raise ApiError(422, "unsafe_webhook_url", f"webhook.url: {exc}") from None
    except HostNotFound as exc:
        raise ApiError(422, "webhook_url_unresolvable", f"webhook.url: {exc}") from None
    if not store.has_live_secret(session, tenant_id):
        raise ApiError(
            422,
            "no_webhook_secret",
            "webhooks are signed: create a secret first (POST /v1/webhooks/secrets)",
        )
    if store.endpoint_disabled(session, tenant_id, url):
        raise ApiError(
            422,
            "webhook_endpoint_disabled",
            "this webhook URL answered 410 Gone; redeliver one of its deliveries to enable it",
        )


@router.post(
    "/webhooks/secrets", status_code=201, response_model=WebhookSecretCreated, responses=_ERRORS
)
def create_secret(tenant_id: TenantDep, services: ServicesDep) -> WebhookSecretCreated:
    """A new signing secret, shown in this answer only. Others in use keep signing."""
    from dispatcher.store import webhooks as store

    with Session(services.engine) as session:
        created = store.create_secret(session, services.keyring, tenant_id)
        session.commit()
    return created


@router.post(
    "/webhooks/secrets/rotate",
    status_code=201,
    response_model=WebhookSecretCreated,
    responses=_ERRORS,
)
def rotate_secrets(
    tenant_id: TenantDep, services: ServicesDep, body: RotateSecrets | None = None
) -> WebhookSecretCreated:
    """A new secret (shown once); the others sign beside it for ``expire_others_after_s``, so
    every delivery meanwhile carries both signatures, then they stop."""
    from dispatcher.store import webhooks as store

    grace = (body or RotateSecrets()).expire_others_after_s
    with Session(services.engine) as session:
        created = store.rotate_secrets(session, services.keyring, tenant_id, grace)
        session.commit()
    return created


@router.get("/webhooks/secrets", response_model=WebhookSecretList, responses=_ERRORS)
def list_secrets(tenant_id: TenantDep, services: ServicesDep) -> WebhookSecretList:
    """The secrets that sign now: ids, fingerprints and expiry, never the secrets."""
    from dispatcher.store import webhooks as store

    with Session(services.engine) as session:
        return WebhookSecretList(data=store.list_secrets(session, tenant_id))


@router.delete("/webhooks/secrets/{secret_id}", status_code=204, responses=_ERRORS)
def delete_secret(secret_id: str, tenant_id: TenantDep, services: ServicesDep) -> Response:
    """Stop signing with a secret at once."""
    from dispatcher.store import webhooks as store

    with Session(services.engine) as session:
        deleted = store.delete_secret(session, tenant_id, secret_id)
        session.commit()
    if not deleted:
        raise ApiError(404, "not_found", f"no webhook secret {secret_id!r}")
    return Response(status_code=204)


@router.get("/runs/{run_id}/deliveries", response_model=DeliveryList, responses=_ERRORS)
def list_deliveries(run_id: str, tenant_id: TenantDep, services: ServicesDep) -> DeliveryList:
    """The run's webhook deliveries, oldest first, each with every attempt."""
    from dispatcher.store import webhooks as store

    with Session(services.engine) as session:
        if run_store.get_run(session, tenant_id, run_id) is None:
            raise ApiError(404, "not_found", f"no run {run_id!r}")
        return DeliveryList(data=store.deliveries_of(session, tenant_id, run_id))


@router.post(
    "/runs/{run_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=DeliveryPublic,
    responses=_ERRORS | {409: {"description": "an attempt is under way"}},
)
def redeliver(
    run_id: str, delivery_id: str, tenant_id: TenantDep, services: ServicesDep
) -> DeliveryPublic:
    """Send a delivery again now, with the same ``webhook-id`` and a fresh retry schedule.
    An endpoint that answered 410 is enabled again."""
    from dispatcher.store import webhooks as store

    with Session(services.engine) as session:
        public = store.redeliver(session, tenant_id, run_id, delivery_id)
        if public is None:
            _missing_or_busy(session, tenant_id, run_id, delivery_id)
        session.commit()
    assert public is not None
    try:
        enqueue_delivery(services.broker, public.id, public.attempt_count + 1)
    except redis.RedisError as exc:
        # It is pending in the store: the webhook pool's sweeper sends it shortly.
        log.warning("redelivery not enqueued", delivery_id=public.id, error=type(exc).__name__)
    return public


def _missing_or_busy(session: Session, tenant_id: str, run_id: str, delivery_id: str) -> None:
    from dispatcher.store import webhooks as store

    known = {d.id for d in store.deliveries_of(session, tenant_id, run_id)}
    if delivery_id in known:
        raise ApiError(409, "delivery_in_progress", "an attempt of this delivery is under way")
    raise ApiError(404, "not_found", f"no delivery {delivery_id!r} of run {run_id!r}")
