"""Store rows -> API bodies, and bodies -> the bytes of a response."""

from datetime import datetime

from fastapi import Response
from pydantic import BaseModel

from schemas.runs import RunAccepted, RunUrls


def run_url(run_id: str) -> str:
    return f"/v1/runs/{run_id}"


def run_accepted(run_id: str, app: str, created_at: datetime) -> RunAccepted:
    """The 202 of a run, from values already checked (built, not validated again)."""
    return RunAccepted.model_construct(
        id=run_id,
        status="queued",
        app=app,
        created_at=created_at,
        urls=RunUrls.model_construct(self=run_url(run_id)),
    )


def json_response(
    body: BaseModel, status_code: int, headers: dict[str, str] | None = None
) -> Response:
    """``body`` serialized once, as it is: FastAPI does not validate a ``Response`` again
    against the route's ``response_model`` (which still documents it)."""
    return Response(
        body.__pydantic_serializer__.to_json(body), status_code, headers, "application/json"
    )
