"""``/v1/run`` and ``/v1/runs``: submit a run, read one, list them.

A plain submit is one INSERT and one enqueue. The rest costs only the requests that ask:
``Idempotency-Key`` (a key row in the same transaction), a webhook (its URL checked, its
subscription recorded in Redis before the enqueue), ``Prefer: wait=N`` (the answer waits on
the run's pub/sub channel, see ``dispatcher.events.RunWatch``).
"""

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from dispatcher.api import events, webhooks
from dispatcher.api.deps import ServicesDep, TenantDep
from dispatcher.api.errors import ApiError
from dispatcher.api.routing import Routed, route_run
from dispatcher.api.views import run_accepted, run_public
from dispatcher.events import Hook
from dispatcher.queue import enqueue_hop
from dispatcher.services import Services
from dispatcher.store import idempotency
from dispatcher.store import runs as store
from schemas.errors import ErrorDetail
from schemas.routing import RoutingOverride
from schemas.runs import (
    TERMINAL_STATUSES,
    BatchAccepted,
    BatchCreate,
    BatchItem,
    RunAccepted,
    RunCreate,
    RunPage,
    RunPublic,
    RunStatus,
)
from schemas.webhooks import WebhookSpec

router = APIRouter(prefix="/v1", tags=["runs"])

_ERRORS: dict[int | str, dict[str, Any]] = {401: {"description": "missing or wrong API key"}}
Prefer = Annotated[
    str | None, Header(description="`wait=N`: answer once the run is over, or after N seconds")
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=idempotency.MAX_KEY_LENGTH,
        description="the same key and body within a day return the first run",
    ),
]


@dataclass(frozen=True)
class Pending:
    """A run added to the session, to enqueue once committed."""

    accepted: RunAccepted
    provider: str
    webhook: WebhookSpec | None


class Submission:
    """Checks, routes and stores runs for one tenant in one session; a batch reuses the
    routes and webhook checks it has already made."""

    def __init__(self, session: Session, services: Services, tenant_id: str) -> None:
        self.session = session
        self.services = services
        self.tenant_id = tenant_id
        self._routes: dict[tuple[str, str | None], Routed] = {}
        self._webhooks: set[str] = set()

    def add(self, body: RunCreate) -> Pending:
        """Add a queued run to the session; ``ApiError`` if the body cannot run."""
        if body.webhook and str(body.webhook.url) not in self._webhooks:
            url = str(body.webhook.url)
            webhooks.check_webhook(self.session, self.services, self.tenant_id, url)
            self._webhooks.add(url)
        routed = self._route(body.app, body.routing)
        resolution = routed.resolution
        run = store.create_run(
            self.session,
            tenant_id=self.tenant_id,
            app=body.app,
            input=body.input,
            chain=resolution.chain,
            requeue_after_s=self.services.settings.requeue_after_s,
            meta=body.metadata,
            webhook=str(body.webhook.url) if body.webhook else None,
            routing_version=routed.version,
            policy=resolution.policy,
            max_attempts=resolution.max_attempts,
            deadline_s=resolution.deadline_s,
        )
        return Pending(run_accepted(run), resolution.chain[0].provider, body.webhook)

    def _route(self, app: str, override: RoutingOverride | None) -> Routed:
        key = (app, override.model_dump_json() if override else None)
        if key not in self._routes:
            self._routes[key] = route_run(
                self.session, self.services, self.tenant_id, app, override
            )
        return self._routes[key]


def dispatch(services: Services, tenant_id: str, runs: Sequence[Pending]) -> list[str]:
    """Record the runs' webhooks, then enqueue each run's first hop. Returns the ids of the
    runs that could not be enqueued; those are deleted again (nothing of them stays)."""
    hooks = [
        Hook(run.accepted.id, tenant_id, str(run.webhook.url), run.webhook.events)
        for run in runs
        if run.webhook
    ]
    sent = 0
    try:
        if hooks:
            services.events.subscribe_webhooks(hooks)
        for run in runs:
            enqueue_hop(services.broker, run.accepted.id, 0, run.provider)
            sent += 1
    except redis.RedisError:
        unsent = [run.accepted.id for run in runs[sent:]]
        with Session(services.engine) as session:
            for run_id in unsent:
                store.delete_run(session, run_id)
            session.commit()
        return unsent
    return []


def _submit(
    services: Services, tenant_id: str, body: RunCreate, key: tuple[str, str] | None = None
) -> RunAccepted:
    with Session(services.engine) as session:
        run = Submission(session, services, tenant_id).add(body)
        if key is not None:
            idempotency.remember(session, tenant_id, *key, run.accepted.id)
        session.commit()
    if dispatch(services, tenant_id, [run]):
        if key is not None:
            with Session(services.engine) as session:
                idempotency.forget(session, tenant_id, key[0])
                session.commit()
        raise ApiError(503, "queue_unavailable", "the queue is not answering; nothing was stored")
    return run.accepted


def _submit_once(
    services: Services, tenant_id: str, body: RunCreate, key: str
) -> tuple[RunAccepted, bool]:
    """The run ``key`` names (True: it was created before), or a new one. Of concurrent
    duplicates, one inserts the key; the others fail on it and answer with its run."""
    hashed = idempotency.body_hash(body)
    for _ in range(3):
        with Session(services.engine) as session:
            first = idempotency.find(session, tenant_id, key)
            run = store.get_run(session, tenant_id, first.run_id) if first else None
            if first is not None and first.body_hash != hashed:
                raise ApiError(
                    422,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with another body in the last 24 hours",
                )
            if run is not None:
                return run_accepted(run), True
        try:
            return _submit(services, tenant_id, body, (key, hashed)), False
        except IntegrityError:
            continue  # a concurrent duplicate inserted the key first: answer with its run
    raise ApiError(409, "idempotency_conflict", "the Idempotency-Key is busy; try again")


def _load(services: Services, tenant_id: str, run_id: str) -> RunPublic | None:
    with Session(services.engine) as session:
        run = store.get_run(session, tenant_id, run_id)
        if run is None:
            return None
        return run_public(run, store.attempts_of(session, [run.id])[run.id])


@router.post(
    "/run",
    status_code=202,
    response_model=RunAccepted,
    responses=_ERRORS
    | {200: {"model": RunPublic, "description": "with `Prefer: wait=N`: the run, over"}},
)
async def submit_run(
    body: RunCreate,
    tenant_id: TenantDep,
    services: ServicesDep,
    request: Request,
    response: Response,
    prefer: Prefer = None,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Queue a run. Nothing is stored or enqueued unless the whole request is valid."""
    if idempotency_key is None:
        accepted = await run_in_threadpool(_submit, services, tenant_id, body)
    else:
        accepted, replayed = await run_in_threadpool(
            _submit_once, services, tenant_id, body, idempotency_key
        )
        response.headers["idempotent-replayed"] = str(replayed).lower()
    wait_s = events.wait_preference(prefer)
    if wait_s is None:
        return accepted
    response.headers["preference-applied"] = f"wait={wait_s:g}"
    load = functools.partial(_load, services, tenant_id, accepted.id)
    run = await events.wait_for_run(events.watch_of(request), accepted.id, load, wait_s)
    if run is not None and run.status in TERMINAL_STATUSES:
        headers = dict(response.headers) | served_by(run)
        return JSONResponse(run.model_dump(mode="json"), headers=headers)
    return accepted


@router.get("/runs/{run_id}", response_model=RunPublic, responses=_ERRORS)
async def get_run(
    run_id: str,
    tenant_id: TenantDep,
    services: ServicesDep,
    request: Request,
    response: Response,
    prefer: Prefer = None,
) -> RunPublic:
    """The run. With ``Prefer: wait=N``, once it is over or after N seconds. Once served,
    ``X-Dispatcher-Provider`` names the provider and credential that served it."""
    wait_s = events.wait_preference(prefer)
    if wait_s is None:
        run = await run_in_threadpool(_load, services, tenant_id, run_id)
    else:
        load = functools.partial(_load, services, tenant_id, run_id)
        run = await events.wait_for_run(events.watch_of(request), run_id, load, wait_s)
    if run is None:
        raise ApiError(404, "not_found", f"no run {run_id!r}")
    response.headers.update(served_by(run))
    return run


def served_by(run: RunPublic) -> dict[str, str]:
    """``X-Dispatcher-Provider: openai; credential=byok:main`` once a provider served the run."""
    if run.provider is None:
        return {}
    credential = "shared" if run.credential_kind == "shared" else f"byok:{run.credential_name}"
    return {"X-Dispatcher-Provider": f"{run.provider}; credential={credential}"}


@router.get("/runs", response_model=RunPage, responses=_ERRORS)
def list_runs(
    tenant_id: TenantDep,
    services: ServicesDep,
    status: RunStatus | None = None,
    app: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> RunPage:
    """Newest first. Pass ``next_cursor`` back as ``cursor`` for the next page."""
    with Session(services.engine) as session:
        runs = store.list_runs(
            session, tenant_id, limit=limit + 1, cursor=cursor, status=status, app=app
        )
        page, more = runs[:limit], len(runs) > limit
        attempts = store.attempts_of(session, [run.id for run in page])
        return RunPage(
            data=[run_public(run, attempts[run.id]) for run in page],
            next_cursor=page[-1].id if more else None,
        )


@router.post("/runs/batch", response_model=BatchAccepted, responses=_ERRORS)
def submit_batch(body: BatchCreate, tenant_id: TenantDep, services: ServicesDep) -> BatchAccepted:
    """Up to 1,000 runs, each validated and routed on its own: the answer lists, in request
    order, each run's id or its error. The valid ones are stored in one transaction."""
    items: list[BatchItem] = []
    valid: list[Pending] = []
    with Session(services.engine) as session:
        submission = Submission(session, services, tenant_id)
        for index, raw in enumerate(body.runs):
            try:
                valid.append(submission.add(RunCreate.model_validate(raw)))
                items.append(BatchItem(index=index, id=valid[-1].accepted.id, status="queued"))
            except ValidationError as exc:
                items.append(BatchItem(index=index, error=_invalid(exc)))
            except ApiError as exc:
                error = ErrorDetail(code=exc.code, message=exc.message, details=exc.details)
                items.append(BatchItem(index=index, error=error))
        session.commit()
    unsent = set(dispatch(services, tenant_id, valid))
    for item in items:
        if item.id in unsent:
            message = "the queue is not answering; this run was not stored"
            item.id, item.status = None, None
            item.error = ErrorDetail(code="queue_unavailable", message=message)
    accepted = sum(1 for item in items if item.id)
    return BatchAccepted(data=items, accepted=accepted, rejected=len(items) - accepted)


def _invalid(exc: ValidationError) -> ErrorDetail:
    """Where and what, without echoing the submitted values back."""
    details = [
        {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]} for err in exc.errors()
    ]
    summary = "; ".join(f"{'.'.join(map(str, d['loc'])) or 'body'}: {d['msg']}" for d in details)
    return ErrorDetail(code="validation_error", message=summary, details=details)


# Server-sent events, and webhook secrets and deliveries, under the same /v1.
router.include_router(events.router)
router.include_router(webhooks.router)
