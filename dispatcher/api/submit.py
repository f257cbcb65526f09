"""``POST /v1/run`` and ``POST /v1/runs/batch``: check, route and queue runs.

A plain submit reads nothing from the store and takes no thread: the API key and the tenant's
routing come from the process's caches, the run's row is built from the values in hand, and
the ``Intake`` writes it together with whatever else arrived meanwhile (one transaction, one
Redis round trip); the 202 is serialized from the same values. ``POST /v1/run`` is a ``Direct``
route, so FastAPI's per-request parameter resolution stays off this path. The rest costs only
the requests that ask: ``Idempotency-Key`` (its lookup on a thread, its row in the run's
transaction), a webhook (its URL checked on a thread, its subscription recorded before the
enqueue), ``Prefer: wait=N`` (the run is watched before it is stored, so it is read once,
when its terminal event is heard; see ``dispatcher.events.RunWatch``).
"""

import functools
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import StringConstraints, TypeAdapter, ValidationError
from sqlmodel import Session

from dispatcher.api import events, webhooks
from dispatcher.api.deps import UNAUTHORIZED, ServicesDep, TenantDep, authenticate, services_of
from dispatcher.api.direct import Direct, body_docs, header, json_body
from dispatcher.api.errors import ApiError
from dispatcher.api.routing import route_run, tenant_routing
from dispatcher.api.runs import read_run, served_by
from dispatcher.api.views import json_response, run_accepted
from dispatcher.events import Hook
from dispatcher.intake import KeyTaken, QueueUnavailable, Submission
from dispatcher.services import Services
from dispatcher.store import idempotency
from dispatcher.store import runs as store
from dispatcher.store.runs import NewRun
from dispatcher.tenant_routing import TenantRouting
from schemas.errors import ErrorDetail
from schemas.runs import (
    TERMINAL_STATUSES,
    BatchAccepted,
    BatchCreate,
    BatchItem,
    RunAccepted,
    RunCreate,
    RunPublic,
)

router = APIRouter(prefix="/v1", tags=["runs"])

_ERRORS = UNAUTHORIZED
_KEY: TypeAdapter[str] = TypeAdapter(
    Annotated[str, StringConstraints(min_length=1, max_length=idempotency.MAX_KEY_LENGTH)]
)
_HEADERS = [
    {
        "name": "prefer",
        "in": "header",
        "schema": {"type": "string"},
        "description": "`wait=N`: answer once the run is over, or after N seconds",
    },
    {
        "name": "idempotency-key",
        "in": "header",
        "schema": {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_KEY_LENGTH},
        "description": "the same key and body within a day return the first run",
    },
]
_QUEUE_DOWN = "the queue is not answering; nothing was stored"


@dataclass(frozen=True)
class Planned:
    """A run ready to store, and its webhook subscription if it asked for one."""

    run: NewRun
    hook: Hook | None


class Planner:
    """Checks, routes and builds the runs of one tenant; a batch reuses its webhook checks
    (and the tenant's routing memoizes each app's chain)."""

    def __init__(self, services: Services, tenant_id: str, routing: TenantRouting) -> None:
        self.services = services
        self.tenant_id = tenant_id
        self.routing = routing
        self._webhooks: set[str] = set()

    async def plan(self, body: RunCreate) -> Planned:
        """The run ``body`` asks for; ``ApiError`` if it cannot run."""
        url = str(body.webhook.url) if body.webhook else None
        if url is not None and url not in self._webhooks:
            await run_in_threadpool(self._check_webhook, url)
            self._webhooks.add(url)
        routed = route_run(self.services, self.routing, body.app, body.routing)
        resolution = routed.resolution
        run = store.new_run(
            tenant_id=self.tenant_id,
            app=body.app,
            input=body.input,
            chain=routed.snapshot,
            requeue_after_s=self.services.settings.requeue_after_s,
            meta=body.metadata,
            webhook=url,
            routing_version=routed.version,
            policy=resolution.policy,
            max_attempts=resolution.max_attempts,
            deadline_s=resolution.deadline_s,
        )
        hook = None
        if url is not None and body.webhook is not None:
            hook = Hook(run.id, self.tenant_id, url, body.webhook.events)
        return Planned(run, hook)

    def _check_webhook(self, url: str) -> None:
        with Session(self.services.engine) as session:
            webhooks.check_webhook(session, self.services, self.tenant_id, url)


async def submit_run(request: Request) -> Response:
    """Queue a run. Nothing is stored or enqueued unless the whole request is valid."""
    services = services_of(request)
    tenant_id = await authenticate(request, services)
    key = header(request, "idempotency-key", _KEY)
    body = await json_body(request, RunCreate)
    wait_s = events.wait_preference(request.headers.get("prefer"))
    headers: dict[str, str] = {}
    if key is None:
        planned = await _plan(services, tenant_id, body)
        run = planned.run
        accepted = run_accepted(run.id, body.app, run.created_at)
        store = functools.partial(_store, services, tenant_id, planned, waited=wait_s is not None)
        if wait_s is None:
            await store()
            return json_response(accepted, 202, headers)
    else:
        accepted, replayed = await _submit_once(services, tenant_id, body, key, wait_s is not None)
        headers["idempotent-replayed"] = str(replayed).lower()
        if wait_s is None:
            return json_response(accepted, 202, headers)
        store = None  # stored already: read before waiting
    headers["preference-applied"] = f"wait={wait_s:g}"
    load = functools.partial(read_run, services, tenant_id, accepted.id)
    watch = events.watch_of(request)
    done = await events.wait_for_run(watch, accepted.id, tenant_id, load, wait_s, start=store)
    if done is not None and done.status in TERMINAL_STATUSES:
        return json_response(done, 200, headers | served_by(done))
    return json_response(accepted, 202, headers)


router.add_api_route(
    "/run",
    submit_run,
    methods=["POST"],
    route_class_override=Direct,
    status_code=202,
    response_model=RunAccepted,
    responses=_ERRORS
    | {
        200: {"model": RunPublic, "description": "with `Prefer: wait=N`: the run, over"},
        400: {"description": "the body is not JSON"},
        413: {"description": "the body is over the size limit"},
        422: {"description": "the body or a header is not valid, or the run cannot be routed"},
        503: {"description": "the queue is not answering; nothing was stored"},
    },
    openapi_extra=body_docs(RunCreate, _HEADERS),
)


async def _plan(services: Services, tenant_id: str, body: RunCreate) -> Planned:
    routing = await tenant_routing(services, tenant_id)
    return await Planner(services, tenant_id, routing).plan(body)


async def _store(
    services: Services,
    tenant_id: str,
    planned: Planned,
    key: tuple[str, str] | None = None,
    *,
    waited: bool,
) -> None:
    """Store and enqueue one planned run (with its idempotency key's row; ``waited``: a
    client waits on it); ``KeyTaken`` if a concurrent request holds the key."""
    run = planned.run
    keys = [idempotency.new_key(tenant_id, *key, run.id)] if key else []
    hooks = [planned.hook] if planned.hook else []
    try:
        await services.intake.submit(Submission([run], keys, hooks, waited))
    except QueueUnavailable:
        raise ApiError(503, "queue_unavailable", _QUEUE_DOWN) from None


async def _submit_once(
    services: Services, tenant_id: str, body: RunCreate, key: str, waited: bool
) -> tuple[RunAccepted, bool]:
    """The run ``key`` names (True: it was created before), or a new one. Of concurrent
    duplicates, one inserts the key; the others fail on it and answer with its run."""
    hashed = idempotency.body_hash(body)
    for _ in range(3):
        first = await run_in_threadpool(_first_run, services, tenant_id, key, hashed)
        if first is not None:
            return first, True
        planned = await _plan(services, tenant_id, body)
        try:
            await _store(services, tenant_id, planned, (key, hashed), waited=waited)
        except KeyTaken:
            continue  # a concurrent duplicate inserted the key first: answer with its run
        return run_accepted(planned.run.id, body.app, planned.run.created_at), False
    raise ApiError(409, "idempotency_conflict", "the Idempotency-Key is busy; try again")


def _first_run(services: Services, tenant_id: str, key: str, hashed: str) -> RunAccepted | None:
    """The run the live ``key`` names; 422 if the key came with another body."""
    with Session(services.engine) as session:
        first = idempotency.find(session, tenant_id, key)
        if first is None:
            return None
        if first.body_hash != hashed:
            raise ApiError(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was used with another body in the last 24 hours",
            )
        run = store.get_run(session, tenant_id, first.run_id)
        return None if run is None else run_accepted(run.id, run.app, run.created_at)


@router.post("/runs/batch", response_model=BatchAccepted, responses=_ERRORS)
async def submit_batch(body: BatchCreate, tenant_id: TenantDep, services: ServicesDep) -> Response:
    """Up to 1,000 runs, each validated and routed on its own: the answer lists, in request
    order, each run's id or its error. The valid ones are stored in one transaction."""
    planner = Planner(services, tenant_id, await tenant_routing(services, tenant_id))
    items: list[BatchItem] = []
    valid: list[Planned] = []
    for index, raw in enumerate(body.runs):
        try:
            valid.append(await planner.plan(RunCreate.model_validate(raw)))
            items.append(BatchItem(index=index, id=valid[-1].run.id, status="queued"))
        except ValidationError as exc:
            items.append(BatchItem(index=index, error=_invalid(exc)))
        except ApiError as exc:
            error = ErrorDetail(code=exc.code, message=exc.message, details=exc.details)
            items.append(BatchItem(index=index, error=error))
    if valid:
        hooks = [planned.hook for planned in valid if planned.hook]
        try:
            await services.intake.submit(Submission([p.run for p in valid], hooks=hooks))
        except QueueUnavailable:
            _refuse_all(items)
    accepted = sum(1 for item in items if item.id)
    return json_response(
        BatchAccepted(data=items, accepted=accepted, rejected=len(items) - accepted), 200
    )


def _refuse_all(items: list[BatchItem]) -> None:
    message = "the queue is not answering; this run was not stored"
    for item in items:
        if item.id:
            item.id, item.status = None, None
            item.error = ErrorDetail(code="queue_unavailable", message=message)


def _invalid(exc: ValidationError) -> ErrorDetail:
    """Where and what, without echoing the submitted values back."""
    details = [
        {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]} for err in exc.errors()
    ]
    summary = "; ".join(f"{'.'.join(map(str, d['loc'])) or 'body'}: {d['msg']}" for d in details)
    return ErrorDetail(code="validation_error", message=summary, details=details)
