"""``GET /v1/usage``: what a tenant's runs used and cost, grouped as asked."""

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlmodel import Session

from dispatcher.api.deps import ServicesDep, TenantDep
from dispatcher.api.errors import ApiError
from dispatcher.store import usage

router = APIRouter(prefix="/v1", tags=["usage"])

DEFAULT_WINDOW = timedelta(days=30)


class UsageReport(BaseModel):
    start: datetime
    end: datetime
    group_by: list[str]
    data: list[dict[str, Any]]


@router.get("/usage", response_model=UsageReport)
def get_usage(
    tenant_id: TenantDep,
    services: ServicesDep,
    start: Annotated[datetime | date | None, Query(alias="from")] = None,
    end: Annotated[datetime | date | None, Query(alias="to")] = None,
    group_by: str = "provider",
) -> UsageReport:
    """Totals per group between ``from`` (inclusive) and ``to`` (exclusive), default the
    last 30 days. ``group_by``: comma-separated of provider, app, model, credential_kind,
    billed_to, outcome, day."""
    groups = [name.strip() for name in group_by.split(",") if name.strip()]
    unknown = [name for name in groups if name not in usage.GROUPS]
    if unknown:
        raise ApiError(
            422, "validation_error", f"group_by: unknown {unknown}", {"allowed": list(usage.GROUPS)}
        )
    to = _instant(end) or datetime.now(UTC)
    since = _instant(start) or to - DEFAULT_WINDOW
    with Session(services.engine) as session:
        data = usage.aggregate(session, tenant_id, since, to, groups)
    return UsageReport(start=since, end=to, group_by=groups, data=data)


def _instant(value: datetime | date | None) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime.combine(value, time.min)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
