"""Usage aggregates in SQL, on SQLite and (when configured) Postgres."""

from datetime import UTC, datetime, timedelta

from sqlmodel import Session

from dispatcher.db import init_db, make_engine
from dispatcher.models import Attempt, Run, UsageEvent
from dispatcher.pricing import Price, PriceTable, load_prices
from dispatcher.store import tenants, usage
from schemas.inference import Usage

DAY = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _event(session: Session, tenant_id: str, n: int, **fields: object) -> UsageEvent:
    """A usage event with the run and attempt it belongs to."""
    run = Run(
        id=f"run_{n}",
        tenant_id=tenant_id,
        app="simulated/echo",
        status="succeeded",
        input={},
        chain=[],
    )
    session.add(run)
    session.flush()
    attempt = Attempt(
        run_id=run.id, number=1, hop=0, provider="simulated", credential_kind="shared",
        outcome="succeeded", latency_ms=4.0, started_at=DAY, finished_at=DAY,
    )  # fmt: skip
    session.add(attempt)
    session.flush()
    values: dict[str, object] = {
        "attempt_id": attempt.id, "tenant_id": tenant_id, "run_id": run.id, "app": "simulated/echo",
        "provider": "simulated", "credential_kind": "shared", "input_tokens": 10,
        "output_tokens": 5, "latency_ms": 4.0, "outcome": "succeeded", "cost_usd": 0.5,
        "billed_to": "platform", "created_at": DAY,
    }  # fmt: skip
    return UsageEvent.model_validate(values | fields)


def test_usage_is_aggregated_by_the_groups_asked_within_the_window(database_url: str) -> None:
    engine = make_engine(database_url)
    init_db(engine)
    with Session(engine) as session:
        mine = tenants.create_tenant(session, "mine").id
        other = tenants.create_tenant(session, "other").id
        byok = {"provider": "openai", "credential_kind": "byok", "billed_to": "tenant_cloud"}
        session.add_all([
            _event(session, mine, 1),
            _event(session, mine, 2, cost_usd=1.25, **byok),
            _event(session, mine, 3, created_at=DAY + timedelta(days=1)),
            _event(session, mine, 4, created_at=DAY - timedelta(days=40)),
            _event(session, other, 5),
        ])  # fmt: skip
        session.commit()
        rows = usage.aggregate(
            session, mine, DAY - timedelta(days=1), DAY + timedelta(days=2), ["provider", "day"]
        )
    engine.dispose()
    totals = {
        "attempts": 1,
        "input_tokens": 10,
        "output_tokens": 5,
        "units": 0.0,
        "mean_latency_ms": 4.0,
    }
    assert rows == [
        {"provider": "openai", "day": "2026-03-01", "cost_usd": 1.25} | totals,
        {"provider": "simulated", "day": "2026-03-01", "cost_usd": 0.5} | totals,
        {"provider": "simulated", "day": "2026-03-02", "cost_usd": 0.5} | totals,
    ]


def test_cost_comes_from_the_price_table() -> None:
    table = PriceTable(
        {"p": {"m": Price(input_per_mtok=2.0, output_per_mtok=10.0), "*": Price(per_unit=0.5)}}
    )
    assert table.cost("p", "m", Usage(input_tokens=1_000_000, output_tokens=500_000)) == 7.0
    assert table.cost("p", "other", Usage(units=4)) == 2.0
    assert table.cost("unknown", None, Usage(input_tokens=10)) == 0.0
    assert load_prices().price("simulated", "echo").input_per_mtok > 0
