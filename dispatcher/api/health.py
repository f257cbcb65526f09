"""Liveness and readiness."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from dispatcher.api.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(services: ServicesDep) -> JSONResponse:
    """Redis and the store both answer."""
    checks = {
        "redis": _check(lambda: services.redis.ping()),
        "store": _check(lambda: _ping_store(services)),
    }
    ready = all(state == "ok" for state in checks.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks}, 200 if ready else 503
    )


def _ping_store(services: ServicesDep) -> None:
    with services.engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def _check(probe: object) -> str:
    try:
        probe()  # type: ignore[operator]
    except Exception as exc:  # a readiness probe reports every failure, whatever it is
        return f"error: {type(exc).__name__}"
    return "ok"
