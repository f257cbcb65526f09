"""Recording attempts on tenant credentials: a health change is written with the attempt and
announced (to every process's credential cache), and only when the health really changed."""

import asyncio
import os
import uuid

import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlmodel import Session

from dispatcher.changes import ConfigChanges
from dispatcher.cooldowns import Cooldowns
from dispatcher.db import utcnow
from dispatcher.events import RunEvents
from dispatcher.queue import make_broker
from dispatcher.settings import Settings
from dispatcher.store import lifecycle, runs, tenants
from dispatcher.store.credentials import get_credential, put_credential
from dispatcher.store.lifecycle import AttemptRow, Claim
from dispatcher.vault import Keyring
from schemas.credentials import OpenAICredential
from schemas.hops import Hop
from schemas.inference import InferenceResult, Usage
from workers.announce import Outbox
from workers.credentials import Credentials
from workers.providers.errors import ProviderError
from workers.recording import Finished, Pending, Recorder
from workers.runtime import Runtime

KEYRING = Keyring({"kek1": os.urandom(32)}, active="kek1")
HOP = Hop(provider="openai", credential="byok:main", model="gpt-4o-mini")
REFUSED = ProviderError("auth_failed", "401: bad key", status_code=401)


@pytest.fixture
def tenant_id(engine: Engine) -> str:
    with Session(engine) as session:
        tenant = tenants.create_tenant(session, f"t-{uuid.uuid4().hex[:8]}")
        key = SecretStr("sk-main-0123456789abcdef1111")
        put_credential(session, KEYRING, tenant.id, "main", OpenAICredential(api_key=key))
        session.commit()
        return tenant.id


@pytest.fixture
def recorder(engine: Engine, redis_client: redis.Redis, settings: Settings) -> Recorder:
    cooldowns = Cooldowns(redis_client, settings.redis_namespace)
    return Recorder(engine, Runtime(10, store_threads=1), cooldowns, requeue_after_s=600)


def _claimed(engine: Engine, tenant_id: str) -> Claim:
    with Session(engine) as session:
        run = runs.create_run(
            session, tenant_id=tenant_id, app="openai/gpt-4o-mini", input={"prompt": "x"},
            chain=[HOP], requeue_after_s=600,
        )  # fmt: skip
        session.commit()
    with engine.begin() as connection:
        (claim,) = lifecycle.claim_runs(connection, [(run.id, 0)], lease_s=30)
    return claim


def _record(recorder: Recorder, claim: Claim, result: InferenceResult | ProviderError) -> Outbox:
    now = utcnow()
    failed = isinstance(result, ProviderError)
    attempt = AttemptRow(
        run_id=claim.run_id, number=claim.attempt, hop=0, provider="openai", model=HOP.model,
        credential_kind="byok", credential_name="main",
        outcome="failed" if failed else "succeeded", latency_ms=1.0, started_at=now,
        finished_at=now, error_class=result.error_class if failed else None,
        message=result.message if failed else None,
    )  # fmt: skip
    recorded: asyncio.Future[None] = asyncio.Future(loop=recorder.runtime.loop)
    pending = Pending()
    pending.add(recorder.decide(Finished(claim, attempt, result, recorded)), recorded)
    outbox = Outbox()
    assert recorder.record(pending, outbox) is None
    return outbox


def _healthy(engine: Engine, tenant_id: str) -> bool:
    with Session(engine) as session:
        credential = get_credential(session, tenant_id, "main")
        assert credential is not None
        return credential.healthy


def test_a_health_change_is_announced_once_and_only_when_it_changes(
    engine: Engine, tenant_id: str, recorder: Recorder
) -> None:
    assert _record(recorder, _claimed(engine, tenant_id), REFUSED).owners == {tenant_id}
    assert not _healthy(engine, tenant_id)
    assert _record(recorder, _claimed(engine, tenant_id), REFUSED).owners == set()
    served = InferenceResult(output={"text": "ok"}, usage=Usage(output_tokens=1))
    assert _record(recorder, _claimed(engine, tenant_id), served).owners == {tenant_id}
    assert _healthy(engine, tenant_id)
    assert _record(recorder, _claimed(engine, tenant_id), served).owners == set()


def test_an_announced_health_change_drops_the_tenants_kept_credentials(
    engine: Engine, tenant_id: str, recorder: Recorder, settings: Settings
) -> None:
    broker = make_broker(settings, settings.locate_redis())
    credentials = Credentials(KEYRING, ttl_s=60)
    changes = ConfigChanges(broker.client, settings.redis_namespace)
    changes.local = [credentials.cache]
    reads: list[str] = []

    def read() -> None:
        reads.append("main")

    credentials.cache.get(tenant_id, "main", read)
    credentials.cache.get(tenant_id, "main", read)
    assert len(reads) == 1
    outbox = _record(recorder, _claimed(engine, tenant_id), REFUSED)
    outbox.send(broker, RunEvents(broker.client, settings.redis_namespace), changes)
    credentials.cache.get(tenant_id, "main", read)
    assert len(reads) == 2
    broker.close()
