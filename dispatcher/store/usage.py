"""Usage aggregates, computed in SQL from the usage events (one per attempt)."""

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlmodel import Session, col

from dispatcher.models import UsageEvent

GROUPS = ("provider", "app", "model", "credential_kind", "billed_to", "outcome", "day")


def _group_column(name: str, dialect: str) -> ColumnElement[Any]:
    if name == "day":
        created = col(UsageEvent.created_at)
        utc = func.timezone("UTC", created) if dialect == "postgresql" else created
        return func.date(utc).label("day")
    return col(getattr(UsageEvent, name)).label(name)


def aggregate(
    session: Session, tenant_id: str, start: datetime, end: datetime, group_by: list[str]
) -> list[dict[str, Any]]:
    """Totals per group over ``[start, end)``: attempts, tokens, units, cost, mean latency."""
    dialect = session.get_bind().dialect.name
    groups = [_group_column(name, dialect) for name in group_by]
    query = (
        select(
            *groups,
            func.count().label("attempts"),
            func.coalesce(func.sum(UsageEvent.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(UsageEvent.output_tokens), 0).label("output_tokens"),
            func.coalesce(func.sum(UsageEvent.units), 0).label("units"),
            func.coalesce(func.sum(UsageEvent.cost_usd), 0).label("cost_usd"),
            func.avg(UsageEvent.latency_ms).label("mean_latency_ms"),
        )
        .where(col(UsageEvent.tenant_id) == tenant_id)
        .where(col(UsageEvent.created_at) >= start, col(UsageEvent.created_at) < end)
        .group_by(*groups)
        .order_by(*groups)
    )
    return [_row(dict(row._mapping)) for row in session.connection().execute(query)]


def _row(row: dict[str, Any]) -> dict[str, Any]:
    if "day" in row and row["day"] is not None:
        row["day"] = str(row["day"])
    row["cost_usd"] = round(float(row["cost_usd"]), 8)
    row["units"] = float(row["units"])
    row["mean_latency_ms"] = round(float(row["mean_latency_ms"] or 0), 3)
    return row
