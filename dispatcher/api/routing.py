"""``/v1/routing``: a tenant's routing config, and what it does to a run right now
(``/v1/routing/explain``); and routing one run at submission."""

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session

from dispatcher.api.deps import UNAUTHORIZED, ServicesDep, TenantDep
from dispatcher.api.errors import ApiError
from dispatcher.cooldowns import Cooldowns
from dispatcher.db import utcnow
from dispatcher.routing import NoRoute, OverrideRefused, check_config, explain
from dispatcher.services import Services
from dispatcher.store import routing as store
from dispatcher.tenant_routing import Routed, TenantRouting
from schemas.routing import (
    ExplainRequest,
    RoutingConfig,
    RoutingExplanation,
    RoutingOverride,
    RoutingPublic,
    SkippedHop,
)

router = APIRouter(prefix="/v1", tags=["routing"])

_ERRORS = UNAUTHORIZED


@router.get("/routing", response_model=RoutingPublic, responses=_ERRORS)
def get_routing(tenant_id: TenantDep, services: ServicesDep) -> RoutingPublic:
    """The config in force; the platform default (``version: null``) until one is saved."""
    with Session(services.engine) as session:
        stored = store.current_config(session, tenant_id)
    if stored is None:
        return RoutingPublic(version=None, updated_at=None, **RoutingConfig().model_dump())
    return _public(stored)


@router.put(
    "/routing",
    response_model=RoutingPublic,
    responses=_ERRORS | {422: {"description": "a hop names what the tenant cannot use"}},
)
def put_routing(body: RoutingConfig, tenant_id: TenantDep, services: ServicesDep) -> RoutingPublic:
    """Save the next version, once every hop checks out against the catalog and credentials."""
    with Session(services.engine) as session:
        owned = store.credential_providers(session, tenant_id, healthy_only=False)
        problems = check_config(body, services.catalog, owned, services.settings.shared_providers)
        if problems:
            details = [{"loc": p.loc, "message": p.message} for p in problems]
            raise ApiError(422, "invalid_routing", "; ".join(map(str, problems)), details)
        try:
            stored = store.put_config(session, tenant_id, body)
        except store.VersionConflict as exc:
            raise ApiError(409, "conflict", f"{exc}; read the config and save again") from None
        session.commit()
    services.changes.announce(tenant_id)
    return _public(stored)


@router.post(
    "/routing/explain",
    response_model=RoutingExplanation,
    responses=_ERRORS | {422: {"description": "an unknown app, or an override that widens"}},
)
def explain_routing(
    body: ExplainRequest, tenant_id: TenantDep, services: ServicesDep
) -> RoutingExplanation:
    """The hops a run of ``app`` submitted now would take, and why each other hop is skipped
    (no credential, excluded by policy, cooling down until a time, ...). Nothing is stored.
    When no hop can serve the app (a run would get ``no_route``), the chain is empty."""
    routing = services.routing.load(tenant_id)
    routed = route_run(services, routing, body.app, body.routing, refuse_no_route=False)
    resolution = routed.resolution
    cooldowns = Cooldowns(services.redis, services.settings.redis_namespace)
    explained = explain(resolution, cooldowns.read(tenant_id, resolution.chain), utcnow())
    return RoutingExplanation(
        app=body.app,
        version=routed.version,
        rule=resolution.rule,
        policy=resolution.policy,
        max_attempts=resolution.max_attempts,
        deadline_s=resolution.deadline_s,
        chain=explained.chain,
        skipped=[
            SkippedHop(hop=s.hop, code=s.code, reason=s.reason, cooling_until=s.until)
            for s in explained.skipped
        ],
        waits_until=explained.waits_until,
    )


async def tenant_routing(services: Services, tenant_id: str) -> TenantRouting:
    """The tenant's routing: from the cache, else read on a thread (never on the event loop)."""
    cached = services.routing.cached(tenant_id)
    if cached is None:
        return await run_in_threadpool(services.routing.load, tenant_id)
    return cached


def route_run(
    services: Services,
    routing: TenantRouting,
    app: str,
    override: RoutingOverride | None,
    *,
    refuse_no_route: bool = True,
) -> Routed:
    """The route of one run of ``app`` under the tenant's ``routing``. No hop can serve it:
    ``no_route`` (422), or, if not ``refuse_no_route``, an empty chain."""
    if not services.catalog.has_app(app):
        raise ApiError(422, "unknown_app", f"unknown app {app!r}", {"app": app})
    try:
        return routing.route(app, override, services.catalog, services.settings.shared_providers)
    except OverrideRefused as exc:
        raise ApiError(422, "routing_override_refused", str(exc), {"app": app}) from None
    except NoRoute as exc:
        if refuse_no_route:
            raise ApiError(422, "no_route", str(exc), {"app": app}) from None
        return Routed(routing.version, exc.resolution, [])


def _public(stored: store.StoredConfig) -> RoutingPublic:
    return RoutingPublic(
        version=stored.version, updated_at=stored.created_at, **stored.config.model_dump()
    )
