"""fal end to end: long jobs through the real queue, API, worker processes and store, against
the fake fal queue on loopback (a job is IN_QUEUE at its first status poll, IN_PROGRESS at its
second, COMPLETED from its third).

A fal run submits its job, parks (the job on the run, shown by ``GET /v1/runs/{id}``) and is
polled by delayed messages: while its jobs wait, a worker pool holds no slot and no thread for
them. The pool here has one dramatiq thread and two slots, yet carries six fal jobs at once and
serves a simulated run meanwhile. Canceling a run cancels its job at fal; a worker killed while
a job waits loses nothing, and the job is submitted once.

``POST /v1/run`` refuses app ids with two slashes (``fal-ai/flux/schnell``) for now: fal runs
are stored with their chain snapshot, as the API stores a routed run, and their first hop
enqueued on the real queue (``submit_pinned``).
"""

import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, col, func, select

from dispatcher.models import UsageEvent
from schemas.hops import Hop
from tests.fakes.common import LoggedRequest
from tests.fakes.fal import FalFake, fal_error
from tests.support.byok import BACKENDS, new_tenant_with_id, running_system, submit_pinned
from tests.support.system import System, wait_for_run

pytestmark = pytest.mark.e2e

APP = "fal-ai/flux/schnell"
CHAIN = [Hop(provider="fal", credential="byok:main", model=APP)]
#: Submit, then polls after 2 s, 3 s and 4.5 s: a job completes about 10 s after it is sent.
JOB_TIMEOUT_S = 60


@dataclass
class Fal:
    system: System
    fake: FalFake

    def tenant(self) -> "Tenant":
        """A new tenant holding the fake's fal key as its credential ``main``."""
        tenant_id, key = new_tenant_with_id(self.system, f"fal-{secrets.token_hex(4)}")
        client = self.system.client(key)
        put = client.put("/v1/credentials/main", json={"provider": "fal", "api_key": self.fake.key})
        assert put.status_code == 200, put.text
        return Tenant(self.system, tenant_id, client)


@dataclass
class Tenant:
    system: System
    id: str
    client: httpx.Client

    def submit(self, **input: Any) -> str:
        """A fal run on the tenant's own key."""
        return submit_pinned(self.system, self.id, APP, {"prompt": "a lighthouse"} | input, CHAIN)


def _fal(fake: FalFake, system: System) -> Fal:
    fake.reset()
    return Fal(system, fake)


@pytest.fixture(scope="module")
def fal_fake() -> Iterator[FalFake]:
    with FalFake(f"fal-{secrets.token_hex(8)}:{secrets.token_hex(16)}").serve() as fake:
        yield fake


@pytest.fixture(scope="module", params=BACKENDS)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, fal_fake: FalFake
) -> Iterator[System]:
    """One pool process for fal and simulated, with one dramatiq thread and two slots."""
    workdir = tmp_path_factory.mktemp(f"fal-{request.param}")
    pools = [("fal", "simulated")]
    with running_system(
        request, workdir, {"fal": fal_fake.url}, pools, worker_threads=1, max_in_flight=2
    ) as system:
        yield system


@pytest.fixture
def fal(served: System, fal_fake: FalFake) -> Fal:
    return _fal(fal_fake, served)


def _echo(client: httpx.Client, prompt: str) -> str:
    """A run of the shared simulated pool, through the API."""
    body = {"app": "simulated/echo", "input": {"prompt": prompt, "latency_ms": 100}}
    accepted = client.post("/v1/run", json=body)
    assert accepted.status_code == 202, accepted.text
    run_id: str = accepted.json()["id"]
    return run_id


def _wait_pending(client: httpx.Client, run_id: str, timeout_s: float = 30) -> Any:
    """The run once it waits on its fal job."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = client.get(f"/v1/runs/{run_id}").json()
        if run["pending_job"] is not None:
            return run
        assert run["status"] in ("queued", "running"), run
        assert time.monotonic() < deadline, f"run {run_id} never waited on a fal job"
        time.sleep(0.05)


def _watch(client: httpx.Client, run_id: str) -> tuple[Any, list[str]]:
    """The finished run, and the fal statuses its pending job showed on the way, in order."""
    seen: list[str] = []
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        run = client.get(f"/v1/runs/{run_id}").json()
        if run["pending_job"] and run["pending_job"]["status"] not in seen[-1:]:
            seen.append(run["pending_job"]["status"])
        if run["status"] not in ("queued", "running"):
            return run, seen
        assert time.monotonic() < deadline, f"run {run_id} still {run['status']}"
        time.sleep(0.05)


def _calls(fake: FalFake, request_id: str) -> list[str]:
    """The fake's log of one job: ``METHOD suffix`` (``status``, ``cancel`` or ``result``)."""
    names = {"/status": "status", "/cancel": "cancel"}
    return [
        f"{logged.method} {names.get(logged.path[-7:], 'result')}"
        for logged in fake.requests
        if f"/requests/{request_id}" in logged.path
    ]


def _submits(fake: FalFake) -> list[LoggedRequest]:
    return [logged for logged in fake.requests if logged.method == "POST"]


def test_a_job_waits_in_queue_then_in_progress_and_completes_with_units_and_its_handle(
    fal: Fal,
) -> None:
    tenant = fal.tenant()
    client, run_id = tenant.client, tenant.submit()

    run, seen = _watch(client, run_id)

    assert run["status"] == "succeeded", (run, fal.system.logs())
    assert seen == ["IN_QUEUE", "IN_PROGRESS"]
    assert run["pending_job"] is None
    # The output as fal returns it; usage in units (two images), priced per unit.
    assert [image["url"] for image in run["output"]["images"]] == [
        "https://v3.fal.media/files/0.jpg",
        "https://v3.fal.media/files/1.jpg",
    ]
    assert run["usage"]["units"] == 2 and run["cost_usd"] == pytest.approx(0.006)
    assert (run["provider"], run["credential_kind"]) == ("fal", "byok")
    [attempt] = run["attempts"]
    job = attempt["provider_job"]
    assert (attempt["outcome"], attempt["number"], job["status"]) == ("succeeded", 1, "COMPLETED")
    assert job["polls"] == 2
    request_id = job["request_id"]
    base = f"{fal.fake.url}/fal-ai/flux/requests/{request_id}"
    assert (job["status_url"], job["response_url"], job["cancel_url"]) == (
        f"{base}/status",
        base,
        f"{base}/cancel",
    )
    # One submit, one status poll per delayed message, then the result: nothing twice.
    [submit] = _submits(fal.fake)
    assert submit.path == f"/{APP}" and submit.json == {"prompt": "a lighthouse"}
    assert _calls(fal.fake, request_id) == ["GET status"] * 3 + ["GET result"]
    assert {logged.headers["authorization"] for logged in fal.fake.requests} == {
        f"Key {fal.fake.key}"
    }


def test_while_fal_jobs_wait_the_worker_holds_no_slot_and_runs_other_runs(fal: Fal) -> None:
    """Six jobs wait at once on a pool with two slots and one thread; a simulated run on the
    same pool is served meanwhile; a job that fails at fal fails its run like any attempt."""
    tenant = fal.tenant()
    client = tenant.client
    fal.fake.fail_job(fal_error(422, "image_too_large"))
    doomed = tenant.submit()
    _wait_pending(client, doomed)  # it took the failure: the next jobs succeed
    jobs = [tenant.submit(seed=n) for n in range(5)]
    echo = _echo(client, "meanwhile")

    served = wait_for_run(client, echo, timeout_s=JOB_TIMEOUT_S)
    fal_runs = [client.get(f"/v1/runs/{run_id}").json() for run_id in [doomed, *jobs]]

    assert served["status"] == "succeeded" and served["output"]["text"] == "meanwhile"
    assert [run["status"] for run in fal_runs] == ["running"] * 6
    finished = [_watch(client, run_id)[0] for run_id in jobs]
    assert [run["status"] for run in finished] == ["succeeded"] * 5, fal.system.logs()
    assert all(run["usage"]["units"] == 2 for run in finished)
    # Every job was submitted before any was done: with a slot held per waiting job, no more
    # than two could have been.
    log = [(logged.method, logged.path) for logged in fal.fake.requests]
    first_result = next(
        i for i, (method, path) in enumerate(log) if method == "GET" and "status" not in path
    )
    assert len([call for call in log[:first_result] if call[0] == "POST"]) == 6

    failed = wait_for_run(client, doomed, timeout_s=JOB_TIMEOUT_S)
    assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_request"
    [attempt] = failed["attempts"]
    assert (attempt["error_class"], attempt["status_code"]) == ("invalid_request", 422)
    assert "image_too_large" in attempt["message"]
    assert attempt["provider_job"]["status"] == "FAILED"


def test_canceling_a_run_cancels_its_job_at_fal_once_and_polls_it_no_more(fal: Fal) -> None:
    tenant = fal.tenant()
    client, run_id = tenant.client, tenant.submit()
    pending = _wait_pending(client, run_id)["pending_job"]

    canceled = client.post(f"/v1/runs/{run_id}/cancel")

    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    job = fal.fake.jobs[pending["request_id"]]
    deadline = time.monotonic() + 30
    while not job.cancelled:
        assert time.monotonic() < deadline, f"the job was not canceled at fal\n{fal.system.logs()}"
        time.sleep(0.05)
    deadline = time.monotonic() + 30
    while client.get(f"/v1/runs/{run_id}").json()["pending_job"] is not None:
        assert time.monotonic() < deadline, "the run kept its job"
        time.sleep(0.05)
    # Past the poll the job was parked for: its message finds nothing to poll.
    poll_at = datetime.fromisoformat(pending["next_poll_at"]).timestamp()
    time.sleep(max(0.0, poll_at - time.time()) + 1.5)
    calls = _calls(fal.fake, pending["request_id"])
    assert calls.count("PUT cancel") == 1
    assert "GET status" not in calls[calls.index("PUT cancel") :]
    run = client.get(f"/v1/runs/{run_id}").json()
    assert (run["status"], run["attempts"], run["usage"]) == ("canceled", [], None)
    assert len(_submits(fal.fake)) == 1


@pytest.fixture(params=BACKENDS)
def bare(request: pytest.FixtureRequest, tmp_path: Path, fal_fake: FalFake) -> Iterator[Fal]:
    """The API alone: the test starts its worker pools."""
    with running_system(request, tmp_path, {"fal": fal_fake.url}, []) as system:
        yield _fal(fal_fake, system)


def test_a_worker_killed_while_a_job_waits_loses_nothing_and_submits_it_once(bare: Fal) -> None:
    tenant = bare.tenant()
    victim = bare.system.start_worker("fal", name="victim")
    client, run_id = tenant.client, tenant.submit()
    pending = _wait_pending(client, run_id)["pending_job"]
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)

    # The delayed poll the victim held comes back (or the sweeper sends one): polled, not sent.
    bare.system.start_worker("fal", name="survivor")
    run = wait_for_run(client, run_id, timeout_s=JOB_TIMEOUT_S)

    assert run["status"] == "succeeded", bare.system.logs()
    assert len(_submits(bare.fake)) == 1
    [attempt] = run["attempts"]
    assert (attempt["number"], attempt["provider_job"]["request_id"]) == (
        1,
        pending["request_id"],
    )
    with Session(bare.system.engine) as session:
        events = session.exec(select(func.count()).where(col(UsageEvent.run_id) == run_id)).one()
    assert events == 1
