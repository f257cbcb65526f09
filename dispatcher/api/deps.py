"""Dependencies that make route signatures read like prose.

Both are ``async``: FastAPI runs a plain ``def`` dependency on its thread pool, a hop per
request for what is a dictionary lookup when the key is cached.
"""

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from dispatcher.api.errors import ApiError
from dispatcher.services import Services


async def get_services(request: Request) -> Services:
    return services_of(request)


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def authenticate(request: Request, services: Services) -> str:
    """The tenant of the request's API key (``Authorization: Bearer <key>``), or 401. A cached
    key costs no store read and no thread."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise ApiError(401, "unauthorized", "send an API key as 'Authorization: Bearer <key>'")
    tenant_id = services.keys.cached(key) or await run_in_threadpool(services.keys.tenant, key)
    if tenant_id is None:
        raise ApiError(401, "unauthorized", "the API key is not valid")
    return tenant_id


async def current_tenant(request: Request, services: ServicesDep) -> str:
    return await authenticate(request, services)


TenantDep = Annotated[str, Depends(current_tenant)]


#: The OpenAPI ``responses`` of a route that needs an API key.
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {401: {"description": "missing or wrong API key"}}
