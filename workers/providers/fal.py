"""fal, through its queue API: long media jobs that no worker waits on.

    POST {base}/{app}        (Authorization: Key <key>)  -> request_id, status/response/cancel URLs
    GET  status_url          202 IN_QUEUE | IN_PROGRESS, 200 COMPLETED {metrics.inference_time}
    GET  response_url        the output, as fal returns it (image/video URLs and metadata)
    PUT  cancel_url          CANCELLATION_REQUESTED | ALREADY_COMPLETED | NOT_FOUND

The base is ``settings.provider_endpoints["fal"]``, else ``https://queue.fal.run``.

A fal job can take minutes, so ``invoke`` submits and raises ``FalPending``: a value carrying
the job's handle (``FalJob``) and the delay before its next poll, like dramatiq's
``Retry(delay=)``. ``poll(job, credential)`` raises ``FalPending`` again (with a longer delay)
while the job is queued or running, and returns the ``InferenceResult`` once it completed.
An executor holds nothing in between -- no thread, no loop task::

    try:
        result = await adapter.invoke(request, credential)    # or adapter.poll(job, credential)
    except FalPending as pending:
        # release the slot; send a delayed message carrying pending.job.as_dict()
        # (JSON-safe), to run adapter.poll(FalJob.from_dict(data), credential) after
        # pending.delay_s; record nothing yet (no attempt has ended)
        ...
    # ProviderError and InferenceResult: as for any adapter. To give up on a job (the run was
    # cancelled, or its deadline passed): await adapter.cancel(job, credential).

The key goes only to the base's origin: a handle whose URLs point elsewhere (it travels through
Redis) is refused before any request. Usage is in ``units``: the number of images when the
output lists them, else the seconds of ``metrics.inference_time``.
"""

import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit

import httpx

from schemas.credentials import FalCredential
from schemas.errors import ErrorClass
from schemas.inference import InferenceRequest, InferenceResult, Usage
from workers.providers.errors import ProviderError, class_for_status
from workers.providers.http import (
    HttpAdapter,
    credential_as,
    dig,
    error_from,
    json_body,
    json_object,
    request_json,
    scrubbed,
    transport_errors,
)

DEFAULT_BASE = "https://queue.fal.run"
#: The first poll comes this long after submit; each next one 1.5 times later, up to the cap.
FIRST_POLL_S = 2.0
MAX_POLL_S = 30.0
POLL_TIMEOUT_S = 30.0
_APP_ID = re.compile(r"[\w-]+(/[\w.-]+)+")
_CANCEL_ANSWERS = frozenset({"CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"})


@dataclass(frozen=True)
class FalJob:
    """A submitted job: what polling it needs, JSON-safe through ``as_dict``/``from_dict``."""

    app: str
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str
    polls: int = 0
    #: The delay before the first poll (``settings.fal_first_poll_s``); later ones grow from it.
    first_poll_s: float = FIRST_POLL_S

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FalJob":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def next_delay_s(self) -> float:
        return min(MAX_POLL_S, self.first_poll_s * 1.5**self.polls)


class FalPending(Exception):
    """The job is queued or running at fal: poll it again after ``delay_s``."""

    def __init__(self, job: FalJob, status: str, queue_position: int | None = None) -> None:
        super().__init__(f"fal job {job.request_id} is {status}")
        self.job = job
        self.status = status
        self.queue_position = queue_position
        self.delay_s = job.next_delay_s()


class FalAdapter(HttpAdapter):
    @property
    def base(self) -> str:
        return self.settings.provider_endpoints.get("fal", DEFAULT_BASE).rstrip("/")

    async def invoke(self, request: InferenceRequest, credential: Any) -> InferenceResult:
        """Submit the job; raises ``FalPending`` (never returns: the result comes by ``poll``)."""
        if not _APP_ID.fullmatch(request.model) or ".." in request.model:
            raise ProviderError("invalid_request", f"{request.model!r} is not a fal app id")
        answer = await self._call(
            "POST", f"{self.base}/{request.model}", credential, request.timeout_s, request.input
        )
        job = FalJob(
            app=request.model,
            request_id=str(answer.get("request_id")),
            status_url=str(answer.get("status_url")),
            response_url=str(answer.get("response_url")),
            cancel_url=str(answer.get("cancel_url")),
            first_poll_s=self.settings.fal_first_poll_s,
        )
        self._check_urls(job)
        raise FalPending(job, "IN_QUEUE", answer.get("queue_position"))

    async def poll(self, job: FalJob, credential: Any) -> InferenceResult:
        """The result of a completed job; raises ``FalPending`` while it is queued or running."""
        self._check_urls(job)
        status = await self._call("GET", job.status_url, credential)
        state = status.get("status")
        if state in ("IN_QUEUE", "IN_PROGRESS"):
            raise FalPending(replace(job, polls=job.polls + 1), state, status.get("queue_position"))
        if state != "COMPLETED":
            raise ProviderError("provider_error", f"fal answered status {state!r}")
        output = await self._call("GET", job.response_url, credential)
        return InferenceResult(output=output, usage=usage_from(output, status.get("metrics")))

    async def cancel(self, job: FalJob, credential: Any) -> str:
        """Ask fal to drop the job: ``CANCELLATION_REQUESTED``, ``ALREADY_COMPLETED`` or
        ``NOT_FOUND``."""
        self._check_urls(job)
        key = _key(credential)
        with transport_errors([key]):
            answer = await self.client.call(
                "PUT", job.cancel_url, headers=_auth(key), timeout_s=POLL_TIMEOUT_S
            )
        status = json_object(answer.content).get("status")
        if status in _CANCEL_ANSWERS:
            return str(status)
        raise scrubbed(error_for(answer.response()), [key])

    async def _call(
        self,
        method: str,
        url: str,
        credential: Any,
        timeout_s: float = POLL_TIMEOUT_S,
        payload: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        key = _key(credential)
        return await request_json(
            self.client,
            method,
            url,
            headers=_auth(key),
            json=payload,
            timeout_s=timeout_s,
            on_error=error_for,
            secrets=[key],
        )

    def _check_urls(self, job: FalJob) -> None:
        """The key goes to the queue's own origin only, whatever URLs a handle carries."""
        origin = urlsplit(self.base)[:2]
        for url in (job.status_url, job.response_url, job.cancel_url):
            if urlsplit(url)[:2] != origin:
                raise ProviderError(
                    "provider_error", f"fal job URL {url!r} is not on the queue's origin"
                )


def _key(credential: Any) -> str:
    return credential_as(credential, FalCredential).api_key.get_secret_value()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Key {key}"}


def usage_from(output: dict[str, Any], metrics: Any) -> Usage:
    images = output.get("images")
    seconds = dig(metrics, "inference_time")
    raw: dict[str, Any] = {"metrics": metrics if isinstance(metrics, dict) else {}}
    if isinstance(images, list):
        return Usage(units=len(images), raw=raw | {"unit": "images"})
    if isinstance(seconds, int | float):
        return Usage(units=float(seconds), raw=raw | {"unit": "seconds"})
    return Usage(raw=raw)


def error_for(response: httpx.Response) -> ProviderError:
    """The one mapping of a fal error answer: by status, its ``X-Fal-Error-Type`` kept in the
    message (a 5xx is not billed); a locked account (exhausted balance) is ``quota_exhausted``."""
    body = json_body(response)
    error_type = response.headers.get("x-fal-error-type") or body.get("error_type")
    detail = body.get("detail")
    text = detail if isinstance(detail, str) else dig(detail, 0, "msg") or ""
    error_class: ErrorClass = class_for_status(response.status_code)
    if "balance" in str(text).lower():
        error_class = "quota_exhausted"
    message = f"{error_type}: {text}" if error_type else str(text)
    return error_from(response, error_class, message)
