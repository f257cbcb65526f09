"""The credentials a worker process keeps: read once, dropped when their owner's configuration
changes (announced at once, or after the cache's TTL when the announcement went missing)."""

import os
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlmodel import Session

from dispatcher.changes import ChangeListener, ConfigChanges
from dispatcher.db import utcnow
from dispatcher.settings import Settings
from dispatcher.store import tenants
from dispatcher.store.credentials import (
    delete_credential,
    get_credential,
    mark_unhealthy,
    put_credential,
)
from dispatcher.store.lifecycle import AttemptRow
from dispatcher.vault import PLATFORM_OWNER, Keyring
from schemas.credentials import OpenAICredential
from schemas.hops import Hop
from tests.support.statements import sqlite_plan, statements_run
from workers.credentials import Credentials, Loaded, note_health
from workers.providers.errors import ProviderError

KEYRING = Keyring({"kek1": os.urandom(32)}, active="kek1")
FIRST = OpenAICredential(api_key=SecretStr("sk-first-0123456789abcd1111"))
SECOND = OpenAICredential(api_key=SecretStr("sk-second-0123456789abc2222"))
HOP = Hop(provider="openai", credential="byok:main")


def _tenant(engine: Engine) -> str:
    """A tenant whose credential ``main`` is ``FIRST``."""
    with Session(engine) as session:
        tenant = tenants.create_tenant(session, f"t-{uuid.uuid4().hex[:8]}")
        put_credential(session, KEYRING, tenant.id, "main", FIRST)
        session.commit()
        return tenant.id


@pytest.fixture
def tenant_id(engine: Engine) -> str:
    return _tenant(engine)


def _load(engine: Engine, credentials: Credentials, tenant_id: str, hop: Hop = HOP) -> Loaded:
    with engine.begin() as connection:
        return credentials.load(connection, tenant_id, hop)


def _until(check: Callable[[], bool], timeout_s: float = 10) -> None:
    """Wait for ``check`` to hold (announcements travel through Redis: no fixed delay)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not within the timeout"
        time.sleep(0.01)


@pytest.fixture
def listening(settings: Settings, redis_client: redis.Redis) -> Iterator[Credentials]:
    """A worker process's credentials, kept a minute, with its listener running."""
    credentials = Credentials(KEYRING, ttl_s=60)
    listener = ChangeListener(redis_client, settings.redis_namespace, [credentials.cache])
    listener.start()
    assert listener.subscribed.wait(5)
    yield credentials
    listener.stop()


def _api(settings: Settings, redis_client: redis.Redis) -> ConfigChanges:
    """Another process's announcer (the API's, say)."""
    return ConfigChanges(redis_client, settings.redis_namespace)


def test_a_credential_is_read_once_and_kept(
    engine: Engine, tenant_id: str, listening: Credentials
) -> None:
    assert _load(engine, listening, tenant_id) == FIRST
    with Session(engine) as session:
        delete_credential(session, tenant_id, "main")
        session.commit()
    assert _load(engine, listening, tenant_id) == FIRST  # kept: nobody announced the change


def test_a_revoked_credential_is_not_used_once_its_owner_announces_the_change(
    engine: Engine,
    tenant_id: str,
    listening: Credentials,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    assert _load(engine, listening, tenant_id) == FIRST
    with Session(engine) as session:
        assert delete_credential(session, tenant_id, "main")
        session.commit()
    _api(settings, redis_client).announce(tenant_id)
    _until(lambda: isinstance(_load(engine, listening, tenant_id), ProviderError))
    refused = _load(engine, listening, tenant_id)
    assert isinstance(refused, ProviderError) and refused.error_class == "auth_failed"
    assert "missing or revoked" in refused.message


def test_a_rotated_credential_is_used_once_its_owner_announces_the_change(
    engine: Engine,
    tenant_id: str,
    listening: Credentials,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    assert _load(engine, listening, tenant_id) == FIRST
    with Session(engine) as session:
        put_credential(session, KEYRING, tenant_id, "main", SECOND)
        session.commit()
    _api(settings, redis_client).announce(tenant_id)
    _until(lambda: _load(engine, listening, tenant_id) == SECOND)


def test_another_owners_change_keeps_the_credential(
    engine: Engine,
    tenant_id: str,
    listening: Credentials,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    other = _tenant(engine)
    assert _load(engine, listening, tenant_id) == FIRST
    assert _load(engine, listening, other) == FIRST
    for owner in (tenant_id, other):
        with Session(engine) as session:
            put_credential(session, KEYRING, owner, "main", SECOND)
            session.commit()
    _api(settings, redis_client).announce(PLATFORM_OWNER)
    _api(settings, redis_client).announce(other)
    # Announcements arrive in order: once the other tenant's is heard, so was the platform's.
    _until(lambda: _load(engine, listening, other) == SECOND)
    assert _load(engine, listening, tenant_id) == FIRST


def test_a_revoked_credential_is_not_used_past_the_ttl_when_no_change_is_announced(
    engine: Engine, tenant_id: str
) -> None:
    credentials = Credentials(KEYRING, ttl_s=0.3)
    assert _load(engine, credentials, tenant_id) == FIRST
    with Session(engine) as session:
        delete_credential(session, tenant_id, "main")
        session.commit()
    time.sleep(0.4)
    assert isinstance(_load(engine, credentials, tenant_id), ProviderError)


def test_a_credential_for_another_provider_is_refused(engine: Engine, tenant_id: str) -> None:
    credentials = Credentials(KEYRING, ttl_s=60)
    refused = _load(
        engine, credentials, tenant_id, Hop(provider="anthropic", credential="byok:main")
    )
    assert isinstance(refused, ProviderError) and "is for openai, not anthropic" in refused.message


def test_the_simulated_provider_needs_no_credential(engine: Engine) -> None:
    assert _load(engine, Credentials(KEYRING, ttl_s=60), "ten_x", Hop(provider="simulated")) is None


def _attempt(outcome: str, error_class: str | None = None) -> AttemptRow:
    now = utcnow()
    return AttemptRow(
        run_id="run_x", number=1, hop=0, provider="openai", model="gpt",
        credential_kind="byok", credential_name="main", outcome=outcome, latency_ms=1.0,
        started_at=now, finished_at=now, error_class=error_class, message="from the provider",
    )  # fmt: skip


def _health(engine: Engine, tenant_id: str) -> tuple[bool, str | None]:
    with Session(engine) as session:
        found = get_credential(session, tenant_id, "main")
    assert found is not None
    return found.healthy, found.health_reason


def test_a_batch_leaves_each_credential_as_its_last_attempt_says_in_one_statement(
    engine: Engine,
) -> None:
    """Successes on many tenants' credentials cost one statement, not one each; within a
    batch the last attempt on a credential decides its health; only real changes count."""
    was_unhealthy, flapped, refused_last, steady = (_tenant(engine) for _ in range(4))
    with Session(engine) as session:
        for tenant in (was_unhealthy, flapped):
            assert mark_unhealthy(session, tenant, "main", "auth_failed: 401")
        session.commit()
    ok, refused = _attempt("succeeded"), _attempt("failed", "auth_failed")
    batch = [
        (was_unhealthy, HOP, ok),
        (flapped, HOP, refused),
        (flapped, HOP, ok),
        (refused_last, HOP, ok),
        (refused_last, HOP, refused),
        (steady, HOP, ok),
        (steady, HOP, _attempt("failed", "rate_limited")),  # says nothing of the key
        (steady, Hop(provider="openai", model="gpt"), refused),  # the shared key: not theirs
    ]
    with statements_run(engine, "UPDATE credential") as updates, engine.begin() as connection:
        changed = note_health(connection, batch)
    assert changed == {was_unhealthy, flapped, refused_last}
    assert len(updates) == 2  # every success at once, and the one refusal
    assert _health(engine, was_unhealthy) == (True, None)
    assert _health(engine, flapped) == (True, None)
    assert _health(engine, refused_last) == (False, "auth_failed: from the provider")
    assert _health(engine, steady) == (True, None)
    if engine.dialect.name == "sqlite":  # the owner ids lead SQLite to the index
        plan = sqlite_plan(engine, *updates[0])
        assert not any(step.startswith("SCAN credential") for step in plan), plan
