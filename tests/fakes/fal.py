"""A fake fal queue: submit, status, response and cancel, with ``Authorization: Key <key>``.

A wrong or missing key gets fal's 401 ``{"detail": ...}``. A job is ``IN_QUEUE`` at its first
status poll (202), ``IN_PROGRESS`` at its second (202) and ``COMPLETED`` from its third on
(200, with ``metrics.inference_time``); its result lists ``fake.images`` images, or is one
video with ``fake.video``. The URLs a submit returns are built like fal's:
``{base}/{owner}/{app}/requests/{request_id}[/status|/cancel]`` (only the first two segments
of the app id). Cancel answers ``CANCELLATION_REQUESTED`` (202), ``ALREADY_COMPLETED`` (400)
or ``NOT_FOUND`` (404).

Failures: ``fake.script(fal_error(status, error_type))`` answers the next submit with it;
``fake.fail_job(reply)`` makes the next submitted job fail at its result.
"""

import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fakes.common import FakeProvider, LoggedRequest, Reply

_STATES = ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")


def fal_error(status: int, error_type: str) -> Reply:
    """A fal request error: ``detail`` and ``error_type``, and the ``X-Fal-Error-Type`` header."""
    body = {"detail": f"fake failure: {error_type}", "error_type": error_type}
    return Reply(status=status, body=body, headers={"X-Fal-Error-Type": error_type})


@dataclass
class Job:
    app: str
    input: Any
    failure: Reply | None = None
    polls: int = 0
    cancelled: bool = False

    @property
    def status(self) -> str:
        return _STATES[min(self.polls, 2)]


class FalFake(FakeProvider):
    def __init__(self, key: str) -> None:
        self.jobs: dict[str, Job] = {}
        self.images = 2
        self.video = False
        self.inference_time = 1.25
        self._job_failures: deque[Reply] = deque()
        super().__init__(key)

    def reset(self) -> Self:
        self.jobs.clear()
        self._job_failures.clear()
        self.images, self.video = 2, False
        return super().reset()

    def fail_job(self, reply: Reply) -> None:
        self._job_failures.append(reply)

    def build_app(self) -> FastAPI:
        app = FastAPI()
        job = "/{owner}/{name}/requests/{request_id}"
        app.get(job + "/status")(self._guarded(self._status))
        app.put(job + "/cancel")(self._guarded(self._cancel))
        app.get(job)(self._guarded(self._result))
        app.post("/{app:path}")(self._submit)
        return app

    def _deny(self, logged: LoggedRequest) -> Response | None:
        if logged.headers.get("authorization") == f"Key {self.key}":
            return None
        return JSONResponse({"detail": "No user found for Key ID and Secret"}, 401)

    async def _submit(self, request: Request, app: str) -> Response:
        def submitted(body: Any) -> dict[str, Any]:
            request_id = str(uuid.uuid4())
            failure = self._job_failures.popleft() if self._job_failures else None
            self.jobs[request_id] = Job(app, body, failure)
            owner_app = "/".join(app.split("/")[:2])
            base = f"{str(request.base_url).rstrip('/')}/{owner_app}/requests/{request_id}"
            return {
                "request_id": request_id,
                "response_url": base,
                "status_url": f"{base}/status",
                "cancel_url": f"{base}/cancel",
                "queue_position": 0,
            }

        return await self.answer(request, deny=self._deny, success=submitted)

    def _guarded(self, handler: Callable[[Job | None], Response]) -> Any:
        """A route that logs the call, checks the key, and hands ``handler`` the job."""

        async def route(request: Request, request_id: str) -> Response:
            denied = self._deny(await self._log(request))
            return denied or handler(self.jobs.get(request_id))

        return route

    def _status(self, job: Job | None) -> Response:
        if job is None:
            return JSONResponse({"detail": "Request not found"}, 404)
        status, job.polls = job.status, job.polls + 1
        if status == "IN_QUEUE":
            return JSONResponse({"status": status, "queue_position": 3}, 202)
        if status == "IN_PROGRESS":
            return JSONResponse({"status": status, "logs": []}, 202)
        metrics = {"inference_time": self.inference_time}
        return JSONResponse({"status": status, "logs": [], "metrics": metrics})

    def _result(self, job: Job | None) -> Response:
        if job is None or job.status != "COMPLETED":
            detail = "Request not found" if job is None else "Request is still in progress"
            return JSONResponse({"detail": detail}, 404 if job is None else 400)
        if job.failure:
            return JSONResponse(job.failure.body, job.failure.status, headers=job.failure.headers)
        if self.video:
            return JSONResponse({"video": {"url": "https://v3.fal.media/files/0.mp4"}})
        images = [
            {"url": f"https://v3.fal.media/files/{i}.jpg", "width": 512, "height": 512}
            for i in range(self.images)
        ]
        return JSONResponse({"images": images, "seed": 42, "timings": {}})

    def _cancel(self, job: Job | None) -> Response:
        if job is None:
            return JSONResponse({"status": "NOT_FOUND"}, 404)
        if job.status == "COMPLETED":
            return JSONResponse({"status": "ALREADY_COMPLETED"}, 400)
        job.cancelled = True
        return JSONResponse({"status": "CANCELLATION_REQUESTED"}, 202)
