"""fal against the fake fal queue over loopback HTTP: submit raises FalPending, poll walks
IN_QUEUE -> IN_PROGRESS -> COMPLETED, cancel, the Key header, errors, and handles that point
off fal's origin."""

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import TypeVar

import pytest

from dispatcher.settings import Settings
from schemas.credentials import FalCredential
from schemas.inference import InferenceResult
from tests.fakes.common import Reply
from tests.fakes.fal import FalFake, fal_error
from tests.workers.providers import assert_secret_kept, chat, failure, loopback, summary
from workers.providers.errors import ProviderError
from workers.providers.fal import FalAdapter, FalJob, FalPending

KEY = "fal-key-id:fal-key-secret"
WRONG = "fal-wrong-id:fal-wrong-secret"
APP = "fal-ai/flux/schnell"
CREDENTIAL = FalCredential(api_key=KEY)
T = TypeVar("T")


@pytest.fixture(scope="module")
def served() -> Iterator[FalFake]:
    with FalFake(KEY).serve() as fake:
        yield fake


@pytest.fixture
def fake(served: FalFake) -> FalFake:
    return served.reset()


@pytest.fixture
def settings(fake: FalFake) -> Settings:
    return loopback(fal=fake.url)


def run(settings: Settings, steps: Callable[[FalAdapter], Awaitable[T]]) -> T:
    """``steps(adapter)`` on a fresh adapter, built, used and closed in one event loop."""

    async def main() -> T:
        adapter = FalAdapter(settings)
        try:
            return await steps(adapter)
        finally:
            await adapter.aclose()

    return asyncio.run(main())


async def submit(adapter: FalAdapter) -> FalPending:
    with pytest.raises(FalPending) as pending:
        await adapter.invoke(chat(APP, prompt="a lighthouse at dusk"), CREDENTIAL)
    return pending.value


def poll_to_the_end(seen: list[FalPending]) -> Callable[[FalAdapter], Awaitable[InferenceResult]]:
    """Submit, then poll as an executor would, each time from a JSON message; every
    ``FalPending`` is kept in ``seen``."""

    async def steps(adapter: FalAdapter) -> InferenceResult:
        seen.append(await submit(adapter))
        while True:
            message = json.loads(json.dumps(seen[-1].job.as_dict()))
            try:
                return await adapter.poll(FalJob.from_dict(message), CREDENTIAL)
            except FalPending as pending:
                seen.append(pending)

    return steps


def test_a_job_goes_in_queue_in_progress_completed_through_poll(
    fake: FalFake, settings: Settings
) -> None:
    seen: list[FalPending] = []
    result = run(settings, poll_to_the_end(seen))

    assert [(p.status, p.delay_s, p.queue_position) for p in seen] == [
        ("IN_QUEUE", 2.0, 0),
        ("IN_QUEUE", 3.0, 3),
        ("IN_PROGRESS", 4.5, None),
    ]
    assert [image["url"] for image in result.output["images"]] == [
        "https://v3.fal.media/files/0.jpg",
        "https://v3.fal.media/files/1.jpg",
    ]
    assert result.usage.units == 2
    assert result.usage.raw == {"metrics": {"inference_time": 1.25}, "unit": "images"}
    submitted, *polls, fetched = fake.requests
    assert (submitted.method, submitted.path, submitted.json) == (
        "POST",
        f"/{APP}",
        {"prompt": "a lighthouse at dusk"},
    )
    [request_id] = fake.jobs
    assert [logged.path for logged in polls] == [f"/fal-ai/flux/requests/{request_id}/status"] * 3
    assert fetched.path == f"/fal-ai/flux/requests/{request_id}"
    assert {logged.headers["authorization"] for logged in fake.requests} == {f"Key {KEY}"}


def test_output_without_images_is_counted_in_seconds(fake: FalFake, settings: Settings) -> None:
    fake.video = True
    result = run(settings, poll_to_the_end([]))

    assert result.output == {"video": {"url": "https://v3.fal.media/files/0.mp4"}}
    assert result.usage.units == 1.25
    assert result.usage.raw == {"metrics": {"inference_time": 1.25}, "unit": "seconds"}


def test_poll_delays_grow_to_a_cap() -> None:
    job = FalJob(APP, "r", "s", "o", "c")
    delays = [replace(job, polls=n).next_delay_s() for n in (0, 1, 2, 10, 50)]

    assert delays == [2.0, 3.0, 4.5, 30.0, 30.0]


def test_a_queued_job_can_be_cancelled_until_it_completes(
    fake: FalFake, settings: Settings
) -> None:
    async def steps(adapter: FalAdapter) -> tuple[str, str]:
        job = (await submit(adapter)).job
        first = await adapter.cancel(job, CREDENTIAL)
        fake.jobs[job.request_id].polls = 3  # it ran to the end anyway
        return first, await adapter.cancel(job, CREDENTIAL)

    assert run(settings, steps) == ("CANCELLATION_REQUESTED", "ALREADY_COMPLETED")
    [job] = fake.jobs.values()
    assert job.cancelled
    assert [logged.method for logged in fake.requests] == ["POST", "PUT", "PUT"]


def test_cancelling_an_unknown_job_says_not_found(settings: Settings) -> None:
    async def steps(adapter: FalAdapter) -> str:
        job = (await submit(adapter)).job
        gone = replace(job, cancel_url=job.cancel_url.replace(job.request_id, "unknown"))
        return await adapter.cancel(gone, CREDENTIAL)

    assert run(settings, steps) == "NOT_FOUND"


def test_a_wrong_key_is_auth_failed_and_not_echoed(settings: Settings) -> None:
    error = failure(FalAdapter, settings, chat(APP), FalCredential(api_key=WRONG))

    assert summary(error) == ("auth_failed", 401, None)
    assert_secret_kept(error, WRONG)


@pytest.mark.parametrize(
    ("status", "error_type", "error_class"),
    [
        (429, "rate_limited", "rate_limited"),
        (503, "runner_scheduling_failure", "overloaded"),
        (500, "internal_error", "provider_error"),
        (422, "validation_error", "invalid_request"),
    ],
)
def test_submit_errors_map_to_error_classes(
    fake: FalFake, settings: Settings, status: int, error_type: str, error_class: str
) -> None:
    fake.script(fal_error(status, error_type))
    error = failure(FalAdapter, settings, chat(APP), CREDENTIAL)

    assert (error.error_class, error.status_code) == (error_class, status)
    assert error.message == f"{error_type}: fake failure: {error_type}"


def test_an_exhausted_balance_is_quota_exhausted(fake: FalFake, settings: Settings) -> None:
    locked = "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard."
    fake.script(Reply(status=403, body={"detail": locked}))

    assert failure(FalAdapter, settings, chat(APP), CREDENTIAL).error_class == "quota_exhausted"


def test_a_job_that_failed_at_fal_fails_at_its_result(fake: FalFake, settings: Settings) -> None:
    fake.fail_job(fal_error(504, "request_timeout"))

    with pytest.raises(ProviderError) as raised:
        run(settings, poll_to_the_end([]))
    assert summary(raised.value) == ("timeout", 504, None)
    assert raised.value.message.startswith("request_timeout: ")


def test_a_handle_pointing_off_the_queue_origin_is_refused(
    fake: FalFake, settings: Settings
) -> None:
    elsewhere = FalJob(
        APP,
        "r1",
        "https://collector.example/status",
        "https://collector.example/r1",
        "https://collector.example/cancel",
    )

    with pytest.raises(ProviderError) as raised:
        run(settings, lambda adapter: adapter.poll(elsewhere, CREDENTIAL))
    assert raised.value.error_class == "provider_error"
    assert fake.requests == []


@pytest.mark.parametrize("app", ["fal-ai", "fal-ai/../admin", "fal-ai/flux?x=1", "/fal-ai/flux"])
def test_an_app_id_that_is_no_fal_path_is_refused(
    fake: FalFake, settings: Settings, app: str
) -> None:
    error = failure(FalAdapter, settings, chat(app), CREDENTIAL)

    assert error.error_class == "invalid_request"
    assert fake.requests == []
