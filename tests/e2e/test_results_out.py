"""Getting results out, through the real API, Redis, a simulated pool and a webhook pool:
``Prefer: wait``, server-sent events, and signed webhooks to a receiver on loopback that
verifies them with the reference ``standardwebhooks`` package.

Loopback receivers need ``webhook_allow_private``; the refusals of private addresses are
checked at the end, in process, with it off."""

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from sqlmodel import Session, func, select
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dispatcher.api.app import create_app
from dispatcher.events import channel_name
from dispatcher.models import Run
from dispatcher.services import build_services
from dispatcher.settings import Settings
from dispatcher.store import tenants
from tests.fakes.server import FakeServer
from tests.support.backends import TEST_DATABASE_URL, TEST_REDIS_URL, make_settings
from tests.support.system import System, wait_for_run
from workers.webhooks import RETRY_DELAYS_S, Delivered, GiveUp, Outcome, Retry, decide

pytestmark = pytest.mark.e2e

BACKENDS = ["embedded"] + (["system"] if TEST_REDIS_URL and TEST_DATABASE_URL else [])
#: Seconds between attempts: seven attempts in about twelve seconds.
RETRY_DELAYS = "0.3,0.5,1,2,3,5"
ECHO = {"app": "simulated/echo", "input": {"prompt": "hello"}}


# --- the system and a receiver ------------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def hooked(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    """API, a simulated pool and a webhook pool, allowed to deliver to loopback."""
    workdir = tmp_path_factory.mktemp(f"results-{request.param}")
    if request.param == "system":
        database_url, redis_url = request.getfixturevalue("postgres_url"), str(TEST_REDIS_URL)
    else:
        database_url = f"sqlite:///{workdir / 'store.db'}"
        redis_url = request.getfixturevalue("embedded_redis_url")
    settings = make_settings(database_url, redis_url, workdir, webhook_allow_private=True)
    system = System(settings, workdir)
    try:
        system.start_worker()
        system.start_worker("--webhooks", "--retry-delays", RETRY_DELAYS, name="webhooks")
        system.start_api()
        yield system
    finally:
        system.stop()


@dataclass
class Call:
    headers: dict[str, str]
    body: bytes

    def verified(self, secret: str) -> Any:
        """The payload, once the reference library accepts the signature."""
        return Webhook(secret).verify(self.body, self.headers)


@dataclass
class Receiver:
    """Records every POST by path; answers each path's scripted statuses, then 200."""

    url: str = ""
    calls: dict[str, list[Call]] = field(default_factory=lambda: defaultdict(list))
    scripts: dict[str, list[int]] = field(default_factory=dict)
    redirect_to: str = ""

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            path = request.url.path
            self.calls[path].append(Call(dict(request.headers), await request.body()))
            script = self.scripts.get(path, [])
            status = script.pop(0) if script else 200
            headers = {"location": self.redirect_to} if 300 <= status < 400 else {}
            return Response(status_code=status, headers=headers)

        return Starlette(routes=[Route("/{path:path}", hook, methods=["POST"])])

    def wait_for(self, path: str, count: int, timeout_s: float = 30) -> list[Call]:
        wait_until(lambda: len(self.calls[path]) >= count, timeout_s, f"{count} calls on {path}")
        return self.calls[path]


@pytest.fixture(scope="module")
def receiver(hooked: System) -> Iterator[Receiver]:
    """A receiver per system: each sees only its own system's deliveries."""
    state = Receiver()
    with FakeServer(state.app()) as server:
        state.url = server.url
        yield state


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout_s}s")
        time.sleep(0.05)
    return found


@pytest.fixture(scope="module")
def client(hooked: System) -> httpx.Client:
    return hooked.client(hooked.new_tenant("results"))


@pytest.fixture(scope="module")
def secret(client: httpx.Client) -> str:
    created = client.post("/v1/webhooks/secrets")
    assert created.status_code == 201
    value: str = created.json()["secret"]
    assert value.startswith("whsec_")
    return value


def submit(client: httpx.Client, body: dict[str, Any], **headers: str) -> httpx.Response:
    return client.post("/v1/run", json=body, headers=headers, timeout=70)


def deliveries(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/runs/{run_id}/deliveries")
    assert response.status_code == 200
    found: list[dict[str, Any]] = response.json()["data"]
    return found


def settled_deliveries(client: httpx.Client, run_id: str, count: int) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        found = deliveries(client, run_id)
        over = [d for d in found if d["status"] in ("delivered", "failed")]
        return found if len(over) >= count else None

    found: list[dict[str, Any]] = wait_until(done, 30, f"{count} settled deliveries")
    return found


# --- wait mode ----------------------------------------------------------------------------


def test_prefer_wait_answers_200_with_the_finished_run(client: httpx.Client) -> None:
    response = submit(client, ECHO, prefer="wait=20")
    assert response.status_code == 200
    assert response.headers["preference-applied"] == "wait=20"
    run = response.json()
    assert run["status"] == "succeeded" and run["output"]["text"] == "hello"
    # the worker hands the finished run to waiters with its terminal event: it is the run the
    # store shows, field for field
    stored = client.get(f"/v1/runs/{run['id']}")
    assert run == stored.json()
    assert response.headers["x-dispatcher-provider"] == stored.headers["x-dispatcher-provider"]


def test_only_a_run_a_client_waits_on_has_its_terminal_event_carry_it(
    hooked: System, client: httpx.Client
) -> None:
    """The submit that waits marks its run's message; the worker then hands the finished run
    with the terminal event on the run's channel (and only there). A run nobody waits on
    costs the worker and every API process nothing more."""
    settings = hooked.settings
    listener = redis.Redis.from_url(settings.locate_redis()).pubsub()
    listener.psubscribe(channel_name(settings.redis_namespace, "*"))
    try:
        waited = submit(client, ECHO, prefer="wait=20").json()
        alone = submit(client, ECHO).json()["id"]
        wait_for_run(client, alone)
        terminal: dict[str, dict[str, Any]] = {}

        def both_heard() -> bool:
            message = listener.get_message(timeout=1)
            if message is not None and message["type"] == "pmessage":
                event = json.loads(message["data"])
                if event["type"] == "succeeded":
                    terminal[event["run_id"]] = event
            return {waited["id"], alone} <= terminal.keys()

        wait_until(both_heard, 20, "both runs' terminal events")
    finally:
        listener.close()
    assert terminal[waited["id"]]["run"] == waited
    assert "run" not in terminal[alone]


def test_prefer_wait_answers_202_when_the_run_outlasts_it(client: httpx.Client) -> None:
    slow = {"app": "simulated/echo", "input": {"prompt": "x", "latency_ms": 4000}}
    started = time.monotonic()
    response = submit(client, slow, prefer="respond-async, wait=1")
    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert time.monotonic() - started >= 0.9  # it did wait
    run = client.get(f"/v1/runs/{response.json()['id']}", headers={"prefer": "wait=20"})
    assert run.json()["status"] == "succeeded"


def test_prefer_wait_sees_a_failure_too(client: httpx.Client) -> None:
    failing = {"app": "simulated/echo", "input": {"prompt": "x", "fail_with": 400}}
    response = submit(client, failing, prefer="wait=20")
    assert response.status_code == 200 and response.json()["status"] == "failed"
    assert response.json() == client.get(f"/v1/runs/{response.json()['id']}").json()


def test_prefer_wait_with_an_idempotency_key_answers_the_run_and_its_replay(
    client: httpx.Client,
) -> None:
    """A new run waits like any other; a replay of the same key waits on the run it names."""
    key = {"idempotency-key": f"wait-{time.monotonic_ns()}"}
    first = submit(client, ECHO, prefer="wait=20", **key)
    again = submit(client, ECHO, prefer="wait=20", **key)
    assert first.status_code == again.status_code == 200
    assert first.headers["idempotent-replayed"] == "false"
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["status"] == "succeeded"


# --- server-sent events -------------------------------------------------------------------


def read_events(client: httpx.Client, run_id: str, **headers: str) -> list[tuple[str, dict]]:
    """Every event of the stream, until the server closes it."""
    events, kind = [], ""
    with client.stream("GET", f"/v1/runs/{run_id}/events", headers=headers, timeout=30) as got:
        assert got.status_code == 200
        assert got.headers["content-type"].startswith("text/event-stream")
        for line in got.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
    return events


def test_events_stream_from_queued_to_the_terminal_one_then_close(client: httpx.Client) -> None:
    failing = {"app": "simulated/echo", "input": {"prompt": "x", "fail_with": 503}}
    run_id = submit(client, failing).json()["id"]
    events = read_events(client, run_id)
    assert [kind for kind, _ in events] == ["queued", "running", "attempt_failed", "failed"]
    assert all(data["run_id"] == run_id and "tenant_id" not in data for _, data in events)
    assert events[2][1]["status_code"] == 503 and events[3][1]["code"] == "chain_exhausted"


def test_events_of_a_finished_run_replay_and_close(client: httpx.Client) -> None:
    run_id = submit(client, ECHO, prefer="wait=20").json()["id"]
    assert [kind for kind, _ in read_events(client, run_id)] == ["queued", "running", "succeeded"]


def test_events_resume_after_the_last_event_id(client: httpx.Client) -> None:
    run_id = submit(client, ECHO, prefer="wait=20").json()["id"]
    with client.stream("GET", f"/v1/runs/{run_id}/events", timeout=30) as got:
        ids = [line.removeprefix("id: ") for line in got.iter_lines() if line.startswith("id: ")]
    resumed = read_events(client, run_id, **{"last-event-id": ids[1]})
    assert [kind for kind, _ in resumed] == ["succeeded"]


def test_events_of_a_canceled_run_end_with_canceled(client: httpx.Client) -> None:
    slow = {"app": "simulated/echo", "input": {"prompt": "x", "latency_ms": 3000}}
    run_id = submit(client, slow).json()["id"]
    assert client.post(f"/v1/runs/{run_id}/cancel").status_code == 200
    assert read_events(client, run_id)[-1][0] == "canceled"


def test_events_of_another_tenants_run_are_not_found(hooked: System, client: httpx.Client) -> None:
    run_id = submit(client, ECHO).json()["id"]
    other = hooked.client(hooked.new_tenant("nosy"))
    assert other.get(f"/v1/runs/{run_id}/events").status_code == 404


# --- webhooks -----------------------------------------------------------------------------


def hook(receiver: Receiver, path: str, events: list[str] | None = None) -> dict[str, Any]:
    url = f"{receiver.url}{path}"
    return {"url": url, "events": events} if events else {"url": url}


def test_a_webhook_gets_the_events_it_asked_for_signed(
    client: httpx.Client, receiver: Receiver, secret: str
) -> None:
    body = ECHO | {"webhook": hook(receiver, "/signed", ["queued", "running", "succeeded"])}
    run_id = submit(client, body).json()["id"]
    calls = receiver.wait_for("/signed", 3)
    payloads = [call.verified(secret) for call in calls]
    assert sorted(p["type"] for p in payloads) == ["run.queued", "run.running", "run.succeeded"]
    assert {p["data"]["run_id"] for p in payloads} == {run_id}
    [done] = [p for p in payloads if p["type"] == "run.succeeded"]
    assert done["data"]["run"]["output"]["text"] == "hello"
    assert len({call.headers["webhook-id"] for call in calls}) == 3
    log = settled_deliveries(client, run_id, 3)
    assert {d["status"] for d in log} == {"delivered"}
    assert {d["id"] for d in log} == {call.headers["webhook-id"] for call in calls}


def test_a_plain_url_gets_the_terminal_event_only(
    client: httpx.Client, receiver: Receiver, secret: str
) -> None:
    failing = {"app": "simulated/echo", "input": {"prompt": "x", "fail_with": 400}}
    submit(client, failing | {"webhook": f"{receiver.url}/plain"})
    [call] = receiver.wait_for("/plain", 1)
    assert call.verified(secret)["type"] == "run.failed"
    time.sleep(0.5)
    assert len(receiver.calls["/plain"]) == 1


def test_retries_keep_the_webhook_id_until_the_receiver_answers(
    client: httpx.Client, receiver: Receiver, secret: str
) -> None:
    receiver.scripts["/flaky"] = [503, 500, 429, 200]
    run_id = submit(client, ECHO | {"webhook": hook(receiver, "/flaky")}).json()["id"]
    calls = receiver.wait_for("/flaky", 4)
    assert len({call.headers["webhook-id"] for call in calls}) == 1
    assert len({call.body for call in calls}) == 1
    for call in calls:
        assert call.verified(secret)["type"] == "run.succeeded"
    [delivery] = settled_deliveries(client, run_id, 1)
    assert delivery["status"] == "delivered" and delivery["attempt_count"] == 4
    assert [a["status_code"] for a in delivery["attempts"]] == [503, 500, 429, 200]


def test_a_receiver_down_for_a_while_then_receives_everything(
    client: httpx.Client, secret: str
) -> None:
    down = Receiver()
    server = FakeServer(down.app())  # bound but not listening: connections are refused
    url = f"{server.url}/late"
    run_ids = [submit(client, ECHO | {"webhook": url}).json()["id"] for _ in range(3)]

    def refused_twice() -> bool:
        logs = [deliveries(client, run_id) for run_id in run_ids]
        return all(log and len(log[0]["attempts"]) >= 2 for log in logs)

    wait_until(refused_twice, 30, "refused attempts")
    with server:
        calls = down.wait_for("/late", 3)
    assert {call.verified(secret)["data"]["run_id"] for call in calls} == set(run_ids)
    for run_id in run_ids:
        [delivery] = settled_deliveries(client, run_id, 1)
        assert delivery["status"] == "delivered"
        assert delivery["attempts"][0]["status_code"] is None
        assert "ConnectError" in delivery["attempts"][0]["error"]


def test_a_410_stops_the_endpoint_until_a_redeliver(
    client: httpx.Client, receiver: Receiver, secret: str
) -> None:
    receiver.scripts["/gone"] = [410]
    run_id = submit(client, ECHO | {"webhook": hook(receiver, "/gone")}).json()["id"]
    [delivery] = settled_deliveries(client, run_id, 1)
    assert delivery["status"] == "failed" and delivery["last_status_code"] == 410
    refused = submit(client, ECHO | {"webhook": hook(receiver, "/gone")})
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "webhook_endpoint_disabled"

    again = client.post(f"/v1/runs/{run_id}/deliveries/{delivery['id']}/redeliver")
    assert again.status_code == 202
    calls = receiver.wait_for("/gone", 2)
    assert calls[0].headers["webhook-id"] == calls[1].headers["webhook-id"] == delivery["id"]
    wait_until(lambda: deliveries(client, run_id)[0]["status"] == "delivered", 30, "delivered")
    assert submit(client, ECHO | {"webhook": hook(receiver, "/gone")}).status_code == 202


def test_redirects_are_not_followed(client: httpx.Client, receiver: Receiver, secret: str) -> None:
    receiver.scripts["/moved"] = [302]
    receiver.redirect_to = f"{receiver.url}/target"
    run_id = submit(client, ECHO | {"webhook": hook(receiver, "/moved")}).json()["id"]
    [delivery] = settled_deliveries(client, run_id, 1)
    assert delivery["status"] == "failed" and delivery["last_status_code"] == 302
    assert "redirect" in delivery["last_error"]
    assert receiver.calls["/target"] == []


def test_during_a_rotation_both_secrets_sign(hooked: System, receiver: Receiver) -> None:
    rotating = hooked.client(hooked.new_tenant("rotating"))
    old = rotating.post("/v1/webhooks/secrets").json()["secret"]
    new = rotating.post("/v1/webhooks/secrets/rotate", json={"expire_others_after_s": 3600})
    assert new.status_code == 201
    listed = rotating.get("/v1/webhooks/secrets").json()["data"]
    assert len(listed) == 2 and all("secret" not in item for item in listed)
    assert sum(item["expires_at"] is None for item in listed) == 1
    submit(rotating, ECHO | {"webhook": hook(receiver, "/rotating")})
    [call] = receiver.wait_for("/rotating", 1)
    assert len(call.headers["webhook-signature"].split()) == 2
    assert call.verified(old) == call.verified(new.json()["secret"])

    rotating.delete(f"/v1/webhooks/secrets/{listed[1]['id']}")
    assert len(rotating.get("/v1/webhooks/secrets").json()["data"]) == 1


def test_a_webhook_needs_a_signing_secret(hooked: System, receiver: Receiver) -> None:
    unsigned = hooked.client(hooked.new_tenant("unsigned"))
    refused = submit(unsigned, ECHO | {"webhook": hook(receiver, "/never")})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "no_webhook_secret"


def test_secrets_never_reach_logs_redis_or_other_answers(
    hooked: System, client: httpx.Client, receiver: Receiver, secret: str
) -> None:
    run_id = submit(client, ECHO | {"webhook": hook(receiver, "/quiet")}).json()["id"]
    receiver.wait_for("/quiet", 1)
    settled_deliveries(client, run_id, 1)
    answers = [
        client.get(path).text
        for path in (f"/v1/runs/{run_id}", f"/v1/runs/{run_id}/deliveries", "/v1/webhooks/secrets")
    ]
    store = redis.Redis.from_url(str(hooked.settings.redis_url))
    dumped = b"".join(
        store.dump(key) or b"" for key in store.scan_iter(f"{hooked.settings.redis_namespace}:*")
    )
    key_material = secret.removeprefix("whsec_")
    logs = "".join(path.read_text() for path in hooked.workdir.glob("*.log"))
    assert logs and key_material not in logs
    assert key_material.encode() not in dumped
    assert all(key_material not in answer for answer in answers)


# --- refusals at submission (in process, private addresses not allowed) -------------------


@pytest.fixture
def strict_api(settings: Settings) -> Iterator[tuple[TestClient, dict[str, str], Any]]:
    services = build_services(settings, str(settings.redis_url))
    with Session(services.engine) as session:
        tenant_id = tenants.create_tenant(session, "strict").id
        key = tenants.create_api_key(session, tenant_id)
        session.commit()
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(services)) as api:
        assert api.post("/v1/webhooks/secrets", headers=headers).status_code == 201
        yield api, headers, services.engine
    services.close()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://[::ffff:127.0.0.1]/",
        "http://[::1]/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://127.1/",
        "http://localhost./",
        "http://localhost/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.7/",
        "http://192.168.1.1/",
        "http://[fe80::1]/",
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "gopher://example.com/",
        "javascript:alert(1)",
    ],
)
def test_webhook_urls_that_reach_inside_are_refused_at_submission(
    strict_api: tuple[TestClient, dict[str, str], Any], url: str
) -> None:
    api, headers, engine = strict_api
    for webhook in (url, {"url": url, "events": ["succeeded"]}):
        response = api.post("/v1/run", json=ECHO | {"webhook": webhook}, headers=headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] in ("unsafe_webhook_url", "validation_error")
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(Run)).one() == 0


def test_unknown_webhook_events_are_refused(
    strict_api: tuple[TestClient, dict[str, str], Any],
) -> None:
    api, headers, _ = strict_api
    body = ECHO | {"webhook": {"url": "https://example.com/h", "events": ["exploded"]}}
    assert api.post("/v1/run", json=body, headers=headers).status_code == 422


# --- the retry decision (a pure function) -------------------------------------------------


def test_the_default_schedule_retries_for_more_than_a_day() -> None:
    assert sum(RETRY_DELAYS_S) >= 86_400
    assert list(RETRY_DELAYS_S) == sorted(RETRY_DELAYS_S)


@pytest.mark.parametrize(
    ("outcome", "in_round", "expected"),
    [
        (Outcome(status_code=204), 1, Delivered()),
        (Outcome(status_code=503), 1, Retry(5)),
        (Outcome(status_code=429), 2, Retry(300)),
        (Outcome(error="ConnectError"), 7, Retry(36_000)),
        (Outcome(error="ConnectError"), 8, GiveUp()),
        (Outcome(status_code=410), 1, GiveUp(disable=True)),
        (Outcome(status_code=302), 1, GiveUp()),
        (Outcome(status_code=400), 1, GiveUp()),
        (Outcome(error="refused: loopback", retryable=False), 1, GiveUp()),
    ],
)
def test_what_an_answer_means(outcome: Outcome, in_round: int, expected: object) -> None:
    assert decide(outcome, in_round, RETRY_DELAYS_S) == expected
