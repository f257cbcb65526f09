"""A worker process killed with SIGKILL mid-run does not lose the run."""

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, col, func, select

from dispatcher.models import UsageEvent
from tests.support.backends import make_settings
from tests.support.system import System, wait_for_run

pytestmark = pytest.mark.e2e


@pytest.fixture
def crash_system(embedded_redis_url: str, tmp_path: Path) -> Iterator[System]:
    settings = make_settings(f"sqlite:///{tmp_path / 'store.db'}", embedded_redis_url, tmp_path)
    system = System(settings, tmp_path)
    try:
        system.start_api()
        yield system
    finally:
        system.stop()


def test_a_run_whose_worker_is_killed_succeeds_exactly_once(crash_system: System) -> None:
    client = crash_system.client(crash_system.new_tenant("crash"))
    victim = crash_system.start_worker(name="victim")
    run_id = client.post(
        "/v1/run",
        json={"app": "simulated/echo", "input": {"prompt": "survive", "latency_ms": 4000}},
    ).json()["id"]
    wait_for_run(client, run_id, timeout_s=30, until={"running"})
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)

    # The lease (2 s here) lapses, a sweep takes the run back, and the survivor runs it.
    crash_system.start_worker(name="survivor")
    run = wait_for_run(client, run_id, timeout_s=40)
    assert run["status"] == "succeeded", crash_system.logs()
    assert run["output"]["text"] == "survive"
    # The killed attempt wrote nothing; the one that finished wrote one attempt and one usage event.
    [attempt] = run["attempts"]
    assert attempt["outcome"] == "succeeded" and attempt["number"] == 2
    with Session(crash_system.engine) as session:
        events = session.exec(select(func.count()).where(col(UsageEvent.run_id) == run_id)).one()
    assert events == 1
