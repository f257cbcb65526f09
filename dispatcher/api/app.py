"""The FastAPI application."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from dispatcher.api import cancel, credentials, errors, health, routing, runs, usage
from dispatcher.api.body import JsonBody
from dispatcher.services import Services


def create_app(services: Services) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        services.close()

    app = FastAPI(
        title="BYOK dispatcher",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.services = services
    errors.install(app)
    app.add_middleware(JsonBody, max_bytes=services.settings.max_body_bytes)
    app.include_router(runs.router)
    app.include_router(cancel.router)
    app.include_router(credentials.router)
    app.include_router(usage.router)
    app.include_router(routing.router)
    app.include_router(health.router)
    return app
