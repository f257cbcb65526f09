"""A run through the real API, real Redis, a real worker process and the real store."""

import json
import time
from datetime import datetime

import httpx
import pytest
import redis

from tests.support.system import System, wait_for_run

pytestmark = pytest.mark.e2e


@pytest.fixture
def client(system: System, api_key: str) -> httpx.Client:
    return system.client(api_key)


def test_a_submitted_run_succeeds_with_output_usage_provider_and_timings(
    client: httpx.Client,
) -> None:
    accepted = client.post(
        "/v1/run", json={"app": "simulated/echo", "input": {"prompt": "hi there"}}
    )
    assert accepted.status_code == 202
    body = accepted.json()
    assert body["status"] == "queued" and body["app"] == "simulated/echo"
    assert body["urls"]["self"] == f"/v1/runs/{body['id']}"

    run = wait_for_run(client, body["id"], timeout_s=10)
    assert run["status"] == "succeeded"
    served = client.get(f"/v1/runs/{body['id']}").headers["x-dispatcher-provider"]
    assert served == "simulated; credential=shared"
    assert run["output"]["text"] == "hi there"
    assert run["usage"]["input_tokens"] == 2 and run["usage"]["output_tokens"] == 2
    assert (run["provider"], run["credential_kind"]) == ("simulated", "shared")
    [attempt] = run["attempts"]
    assert attempt["outcome"] == "succeeded" and attempt["hop"] == 0 and attempt["number"] == 1
    timings = run["timings"]
    created, finished = (datetime.fromisoformat(timings[k]) for k in ("created_at", "finished_at"))
    assert finished >= created and timings["total_ms"] >= timings["queued_ms"] >= 0


def test_a_body_sent_the_way_curl_sends_it_is_read_as_json(client: httpx.Client) -> None:
    """``curl -d`` labels JSON as form-urlencoded; the README's first command relies on this."""
    response = client.post(
        "/v1/run",
        content=b'{"app":"simulated/echo","input":{"prompt":"hi"}}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 202
    assert wait_for_run(client, response.json()["id"])["status"] == "succeeded"


def test_a_provider_refusal_fails_the_run_with_the_providers_message(client: httpx.Client) -> None:
    run_id = client.post(
        "/v1/run", json={"app": "simulated/echo", "input": {"prompt": "x", "fail_with": 400}}
    ).json()["id"]
    run = wait_for_run(client, run_id)
    assert run["status"] == "failed"
    assert run["error"]["code"] == "invalid_request"
    assert "400" in run["error"]["message"]
    [attempt] = run["attempts"]
    assert (attempt["status_code"], attempt["error_class"]) == (400, "invalid_request")


def test_a_retryable_failure_with_no_further_hop_exhausts_the_chain(client: httpx.Client) -> None:
    run_id = client.post(
        "/v1/run",
        json={
            "app": "simulated/echo",
            "input": {"prompt": "x", "fail_with": 503, "retry_after_s": 1},
        },
    ).json()["id"]
    run = wait_for_run(client, run_id)
    assert run["status"] == "failed" and run["error"]["code"] == "chain_exhausted"
    [attempt] = run["attempts"]
    assert attempt["error_class"] == "overloaded" and attempt["retry_after_s"] == 1


def test_one_worker_process_holds_many_slow_calls_at_once(
    system: System, client: httpx.Client
) -> None:
    """With 8 worker threads, 120 one-second calls overlap far beyond 8: they are in flight
    on the event loop, not one per thread. Measured from the attempts' own timestamps."""
    ids = [
        client.post(
            "/v1/run",
            json={"app": "simulated/echo", "input": {"prompt": f"{i}", "latency_ms": 1000}},
        ).json()["id"]
        for i in range(120)
    ]
    runs = [wait_for_run(client, run_id, timeout_s=60) for run_id in ids]
    assert all(run["status"] == "succeeded" for run in runs)
    spans = [
        (datetime.fromisoformat(a["started_at"]), datetime.fromisoformat(a["finished_at"]))
        for run in runs
        for a in run["attempts"]
    ]
    peak = max(sum(1 for s, f in spans if s <= start < f) for start, _ in spans)
    assert peak > 4 * system.settings.worker_threads


def test_tenants_see_only_their_own_runs(system: System, client: httpx.Client) -> None:
    other = system.client(system.new_tenant("someone-else"))
    run_id = client.post(
        "/v1/run", json={"app": "simulated/echo", "input": {"prompt": "mine"}}
    ).json()["id"]
    assert other.get(f"/v1/runs/{run_id}").status_code == 404
    assert run_id not in [run["id"] for run in other.get("/v1/runs").json()["data"]]


def test_usage_and_cost_are_aggregated_per_attempt(client: httpx.Client) -> None:
    run_id = client.post(
        "/v1/run", json={"app": "simulated/echo", "input": {"prompt": "count these four words"}}
    ).json()["id"]
    run = wait_for_run(client, run_id)
    assert run["cost_usd"] > 0 and run["attempts"][0]["cost_usd"] == run["cost_usd"]
    report = client.get("/v1/usage", params={"group_by": "provider,credential_kind,day"}).json()
    [row] = [r for r in report["data"] if r["provider"] == "simulated"]
    assert row["credential_kind"] == "shared" and row["attempts"] >= 1
    assert row["input_tokens"] >= 4 and row["cost_usd"] >= run["cost_usd"]
    assert client.get("/v1/usage", params={"group_by": "colour"}).status_code == 422


def test_a_running_run_can_be_canceled_and_its_result_is_discarded(client: httpx.Client) -> None:
    run_id = client.post(
        "/v1/run", json={"app": "simulated/echo", "input": {"prompt": "x", "latency_ms": 1500}}
    ).json()["id"]
    wait_for_run(client, run_id, until={"running"})
    canceled = client.post(f"/v1/runs/{run_id}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    time.sleep(2.0)  # the provider call ends meanwhile; its outcome must not land
    run = client.get(f"/v1/runs/{run_id}").json()
    assert run["status"] == "canceled" and run["output"] is None and run["attempts"] == []
    again = client.post(f"/v1/runs/{run_id}/cancel")
    assert again.status_code == 409 and again.json()["error"]["details"] == {"status": "canceled"}
    assert client.post("/v1/runs/run_missing/cancel").status_code == 404


def test_run_events_land_in_the_run_stream_and_the_shared_stream(
    system: System, client: httpx.Client
) -> None:
    ok = client.post("/v1/run", json={"app": "simulated/echo", "input": {"prompt": "x"}}).json()[
        "id"
    ]
    bad = client.post(
        "/v1/run", json={"app": "simulated/echo", "input": {"prompt": "x", "fail_with": 400}}
    ).json()["id"]
    wait_for_run(client, ok)
    wait_for_run(client, bad)
    redis_client = redis.Redis.from_url(str(system.settings.redis_url))
    namespace = system.settings.redis_namespace

    def types(run_id: str) -> list[str]:
        """The run's event types, once its terminal one is in (events follow the commit)."""
        deadline = time.monotonic() + 10
        while True:
            entries = redis_client.xrange(f"{namespace}:events:{run_id}")
            found = [json.loads(fields[b"event"])["type"] for _, fields in entries]
            if found[-1:] in (["succeeded"], ["failed"]) or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    assert types(ok) == ["running", "succeeded"]
    assert types(bad) == ["running", "attempt_failed", "failed"]
    shared = [
        json.loads(f[b"event"])["run_id"] for _, f in redis_client.xrange(f"{namespace}:events")
    ]
    assert ok in shared and bad in shared


def test_worker_log_lines_inside_a_run_carry_its_context(
    system: System, client: httpx.Client
) -> None:
    run_id = client.post(
        "/v1/run", json={"app": "simulated/echo", "input": {"prompt": "x"}}
    ).json()["id"]
    wait_for_run(client, run_id)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [
            json.loads(line)
            for line in (system.workdir / "worker.log").read_text().splitlines()
            if run_id in line
        ]
        if any(line["event"] == "attempt recorded" for line in lines):
            break
        time.sleep(0.05)
    recorded = [line for line in lines if line["event"] == "attempt recorded"]
    assert recorded, lines
    for line in recorded:
        assert {"run_id", "tenant", "provider", "hop", "attempt"} <= line.keys()


STARTED = {"api.log": "API starting", "worker.log": "worker pool started"}


def logged(system: System, name: str, event: str) -> list[dict[str, object]]:
    """The JSON lines of ``event`` in the process log ``name``."""
    lines = [
        json.loads(line)
        for line in (system.workdir / name).read_text().splitlines()
        if line.startswith("{")
    ]
    return [line for line in lines if line["event"] == event]


def test_the_api_and_the_worker_keep_their_start_up_heap_out_of_collections(
    system: System, client: httpx.Client
) -> None:
    """Both processes settle their heap once started (``dispatcher.process``): a full
    collection of it stalled a worker's calls for up to 150 ms."""
    run_id = client.post("/v1/run", json={"app": "simulated/echo", "input": {}}).json()["id"]
    wait_for_run(client, run_id)  # the worker is up
    for name, event in STARTED.items():
        [line] = logged(system, name, event)
        frozen = line["frozen_objects"]
        assert isinstance(frozen, int) and frozen > 50_000, line


def test_on_sqlite_the_api_and_the_worker_checkpoint_the_store_log_off_their_commits(
    system: System, client: httpx.Client
) -> None:
    """``dispatcher.checkpoints``: a commit that checkpointed stalled its stage for 4 ms+."""
    run_id = client.post("/v1/run", json={"app": "simulated/echo", "input": {}}).json()["id"]
    wait_for_run(client, run_id)
    on_sqlite = system.engine.dialect.name == "sqlite"
    for name in STARTED:
        lines = logged(system, name, "store log checkpointed in the background")
        assert len(lines) == (1 if on_sqlite else 0), lines
