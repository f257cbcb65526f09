"""The FastAPI application."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig

from dispatcher.api import (
    cancel,
    credentials,
    errors,
    health,
    metrics,
    routing,
    runs,
    submit,
    usage,
)
from dispatcher.api.direct import DirectApp, document_models
from dispatcher.services import Services
from schemas.runs import RunCreate

#: FastAPI's own OpenTelemetry, off: it would only ask, on every request, whether a tracer
#: or meter provider was configured (none is; the API's metrics are Prometheus at /metrics).
TELEMETRY_OFF: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}


def create_app(services: Services) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Blocking work (sync endpoints, store reads) runs on this many threads, not anyio's 40.
        to_thread.current_default_thread_limiter().total_tokens = services.settings.api_threads
        yield
        services.close()

    app = DirectApp(
        title="BYOK dispatcher",
        version="0.1.0",
        lifespan=lifespan,
        telemetry=TELEMETRY_OFF,
        max_body_bytes=services.settings.max_body_bytes,
    )
    app.state.services = services
    errors.install(app)
    app.include_direct(submit.router)
    app.include_router(runs.router)
    app.include_router(cancel.router)
    app.include_router(credentials.router)
    app.include_router(usage.router)
    app.include_router(routing.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    document_models(app, [RunCreate])
    return app
