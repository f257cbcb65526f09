"""Direct routes: documented by FastAPI, called without its per-request machinery.

For every request FastAPI passes through its middleware stack (error handling, telemetry, body
limits, exit stacks), its routers, then resolves the endpoint's parameters through its
dependency system and validates the return value against ``response_model``. On this machine
that is 0.15 ms of CPU before an endpoint that takes only the ``Request`` runs, 0.8 ms for one
with a body model, two dependencies and two headers: more than the whole budget of a submit.

A ``Direct`` route's endpoint takes the ``Request`` and returns a ``Response``. FastAPI knows
the route (OpenAPI from ``response_model``, ``responses``, and ``openapi_extra`` from
``body_docs`` for what the endpoint reads itself) and would call it like Starlette calls an
endpoint; ``DirectApp`` takes its exact method and path before all of that: the body rules
(``JsonBody``), then the endpoint, then, on an exception, the answer FastAPI's handlers give
(``errors.answer``; an unexpected one is then raised on to the server, as FastAPI does). The
endpoint validates its input with ``json_body`` and ``header``, which raise FastAPI's own
``RequestValidationError``: a bad request gets the same answer as anywhere.
"""

import json
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.types import Receive, Scope, Send

from dispatcher.api import errors
from dispatcher.api.body import JsonBody

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


class Direct(APIRoute):
    def get_route_handler(self) -> Endpoint:
        endpoint: Endpoint = self.endpoint
        return endpoint


class DirectApp(FastAPI):
    """FastAPI behind the body rules, taking its ``Direct`` routes first."""

    def __init__(self, *, max_body_bytes: int, **options: Any) -> None:
        super().__init__(**options)
        self._direct: dict[tuple[str, str], Endpoint] = {}
        self._front = JsonBody(self._dispatch, max_body_bytes)

    def include_direct(self, router: APIRouter) -> None:
        """``include_router``, and the router's ``Direct`` routes taken first."""
        self.include_router(router)
        for route in router.routes:
            if isinstance(route, Direct):
                for method in route.methods or ():
                    self._direct[(method, route.path)] = route.get_route_handler()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._front(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = None
        if scope["type"] == "http":
            endpoint = self._direct.get((scope["method"], scope["path"]))
        if endpoint is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Exception as exc:  # answered, and raised on, as FastAPI does
            await (await errors.answer(request, exc))(scope, receive, send)
            if errors.unexpected(exc):
                raise
            return
        await response(scope, receive, send)


async def json_body(request: Request, model: type[M]) -> M:
    """The request's JSON body as ``model``; as FastAPI answers a bad one: 400 for JSON that
    does not parse, 422 for a body missing, not JSON, or not valid. (``JsonBody`` has made
    the content types curl and forms send ``application/json`` already.)"""
    raw = await request.body()
    if not raw:
        raise _invalid([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    data: Any = raw
    if _is_json(request.headers.get("content-type", "")):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error"}
            raise _invalid([error]) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc.errors(include_url=False), "body") from None


def header(request: Request, name: str, adapter: TypeAdapter[T]) -> T | None:
    """Header ``name`` validated by ``adapter`` (None when absent), 422 as FastAPI words it."""
    value = request.headers.get(name)
    if value is None:
        return None
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise _invalid(exc.errors(include_url=False), "header", name) from None


def body_docs(model: type[BaseModel], headers: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """``openapi_extra`` for a Direct route that reads a JSON ``model`` (added to the
    components by ``document_models``) and ``headers`` (OpenAPI header parameters)."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    body = {"required": True, "content": {"application/json": {"schema": schema}}}
    return {"requestBody": body, "parameters": list(headers)}


def document_models(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
    """Add ``models`` (the bodies of Direct routes) to the components of ``app``'s OpenAPI."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            ref = "#/components/schemas/{model}"
            _, defs = models_json_schema([(m, "validation") for m in models], ref_template=ref)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _is_json(content_type: str) -> bool:
    kind = content_type.partition(";")[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def _invalid(errors: Sequence[Any], *where: str | int) -> RequestValidationError:
    return RequestValidationError(
        [dict(error, loc=(*where, *error["loc"])) for error in errors] if where else errors
    )
