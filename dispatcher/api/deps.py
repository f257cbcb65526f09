"""Dependencies that make route signatures read like prose."""

from typing import Annotated

from fastapi import Depends, Request

from dispatcher.api.errors import ApiError
from dispatcher.services import Services


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def current_tenant(request: Request, services: ServicesDep) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "unauthorized", "send an API key as 'Authorization: Bearer <key>'")
    tenant_id = services.keys.tenant(key.strip())
    if tenant_id is None:
        raise ApiError(401, "unauthorized", "the API key is not valid")
    return tenant_id


TenantDep = Annotated[str, Depends(current_tenant)]
