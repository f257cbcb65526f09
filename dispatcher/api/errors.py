"""Every error the API answers with has one shape: ``{"error": {"code", "message", "details"}}``."""

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from structlog import get_logger

log = get_logger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def error_response(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status)


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Where and what, without echoing the submitted values back."""
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]


async def _on_api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.details)


async def _on_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = _validation_details(exc)
    if any(err["type"] == "json_invalid" for err in details):
        return error_response(400, "malformed_json", "the request body is not valid JSON", details)
    summary = "; ".join(
        f"{'.'.join(map(str, d['loc'][1:])) or 'body'}: {d['msg']}" for d in details
    )
    return error_response(422, "validation_error", summary, details)


async def _on_http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        exc.status_code, "http_error"
    )
    return error_response(exc.status_code, code, str(exc.detail))


async def _on_unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", error_type=type(exc).__name__)
    return error_response(500, "internal_error", "the server failed to handle this request")


Handler = Callable[[Request, Exception], Awaitable[JSONResponse]]

#: Which handler answers which exception (the most specific class in its MRO wins).
HANDLERS: dict[type[Exception], Handler] = {
    ApiError: _on_api_error,
    RequestValidationError: _on_validation,
    StarletteHTTPException: _on_http,
    Exception: _on_unexpected,
}


def install(app: FastAPI) -> None:
    for exc_type, handler in HANDLERS.items():
        app.add_exception_handler(exc_type, handler)


async def answer(request: Request, exc: Exception) -> JSONResponse:
    """The answer FastAPI would give to ``exc``, for an endpoint it did not call itself."""
    return await _handler(exc)(request, exc)


def unexpected(exc: Exception) -> bool:
    """No handler of its own answers ``exc``: it is a 500, and FastAPI raises it on to the
    server, which logs it."""
    return _handler(exc) is _on_unexpected


def _handler(exc: Exception) -> Handler:
    return next(HANDLERS[cls] for cls in type(exc).__mro__ if cls in HANDLERS)
