"""End-to-end helpers for BYOK runs: a system whose workers reach fake providers on loopback,
runs pinned to a chain, and text dumps of everything the system wrote (for secret scans).

    settings = loopback_settings(database_url, redis_url, workdir, {"openai": fake.url})
    system = loopback_system(settings, workdir)   # a System whose children get every setting
    with running_system(request, workdir, endpoints, [("openai",)]) as system: ...  # all of it
    tenant_id, key = new_tenant_with_id(system, "acme")
    run_id = submit_pinned(system, tenant_id, "google/gemini-2.5-pro", {...}, [Hop(...), ...])

``backends(kind, ...)`` gives the store and Redis URLs of one of ``BACKENDS``: the embedded
Redis with SQLite, and (when TEST_DATABASE_URL and TEST_REDIS_URL are set) the machine's
Redis with a fresh Postgres database of its own.
"""

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy
from sqlalchemy import Engine
from sqlmodel import Session

from dispatcher.queue import enqueue_hop, make_broker
from dispatcher.settings import Settings
from dispatcher.store import runs, tenants
from schemas.hops import Hop
from tests.support.backends import (
    TEST_DATABASE_URL,
    TEST_REDIS_URL,
    make_settings,
    postgres_database,
)
from tests.support.system import System

LOOPBACK = "127.0.0.1"
BACKENDS = ["embedded"] + (["system"] if TEST_REDIS_URL and TEST_DATABASE_URL else [])


@contextmanager
def backends(
    kind: str, workdir: Path, embedded_redis_url: Callable[[], str]
) -> Iterator[tuple[str, str]]:
    """(database URL, Redis URL) for ``kind``; a Postgres database is dropped afterwards."""
    if kind == "system":
        assert TEST_DATABASE_URL and TEST_REDIS_URL
        with postgres_database(TEST_DATABASE_URL) as database_url:
            yield database_url, TEST_REDIS_URL
    else:
        yield f"sqlite:///{workdir / 'store.db'}", embedded_redis_url()


def loopback_settings(
    database_url: str,
    redis_url: str,
    var_dir: Path,
    endpoints: Mapping[str, str],
    **overrides: object,
) -> Settings:
    """Fast test settings with ``endpoints`` (provider -> fake's base URL) and loopback added to
    the allow-lists of provider hosts and token hosts."""
    fields = Settings.model_fields
    hosts: list[str] = [*fields["provider_hosts"].default, LOOPBACK]
    token_hosts: list[str] = [*fields["token_hosts"].default, LOOPBACK]
    values: dict[str, object] = {
        "provider_endpoints": dict(endpoints),
        "provider_hosts": hosts,
        "token_hosts": token_hosts,
    }
    return make_settings(database_url, redis_url, var_dir, **(values | overrides))


def child_env(settings: Settings) -> dict[str, str]:
    """What ``settings_env`` leaves out: list and dict settings as JSON, the KEK in clear."""
    env = {
        f"DISPATCHER_{name.upper()}": json.dumps(value)
        for name, value in settings.model_dump(mode="json").items()
        if isinstance(value, list | dict)
    }
    if settings.kek is not None:
        env["DISPATCHER_KEK"] = settings.kek.get_secret_value()
    return env


def loopback_system(settings: Settings, workdir: Path) -> System:
    """A ``System`` whose API and worker processes get every one of ``settings``."""
    system = System(settings, workdir)
    system.env |= child_env(settings)
    return system


@contextmanager
def running_system(
    request: pytest.FixtureRequest,
    workdir: Path,
    endpoints: Mapping[str, str],
    pools: Sequence[Sequence[str]],
    **overrides: object,
) -> Iterator[System]:
    """The API and a worker pool process per entry of ``pools`` (its providers), on the
    backends ``request.param`` names (one of ``BACKENDS``), reaching ``endpoints``; stopped
    afterwards."""
    with backends(
        request.param, workdir, lambda: request.getfixturevalue("embedded_redis_url")
    ) as (database_url, redis_url):
        settings = loopback_settings(database_url, redis_url, workdir, endpoints, **overrides)
        system = loopback_system(settings, workdir)
        try:
            for providers in pools:
                system.start_worker(*providers, name=f"worker-{'-'.join(providers)}")
            system.start_api()
            yield system
        finally:
            system.stop()


def new_tenant_with_id(system: System, name: str) -> tuple[str, str]:
    """A tenant made straight in the store: (tenant id, API key)."""
    with Session(system.engine) as session:
        tenant = tenants.create_tenant(session, name)
        key = tenants.create_api_key(session, tenant.id)
        session.commit()
        return tenant.id, key


def submit_pinned(
    system: System, tenant_id: str, app: str, input: dict[str, Any], chain: list[Hop]
) -> str:
    """A run stored with ``chain`` as its chain snapshot (as the API stores a routed run) and
    its first hop enqueued on the real queue. For chains no routing config can produce."""
    with Session(system.engine) as session:
        run = runs.create_run(
            session,
            tenant_id=tenant_id,
            app=app,
            input=input,
            chain=chain,
            requeue_after_s=system.settings.requeue_after_s,
        )
        session.commit()
        run_id = run.id
    enqueue(system, run_id, 0, chain[0].provider)
    return run_id


def enqueue(system: System, run_id: str, hop: int, provider: str) -> None:
    """One message ``(run_id, hop)`` on ``run.<provider>``, as the API sends it."""
    broker = make_broker(system.settings, system.settings.locate_redis())
    try:
        enqueue_hop(broker, run_id, hop, provider)
    finally:
        broker.close()


def recording_client(
    system: System, key: str, sink: list[str], timeout_s: float = 45
) -> httpx.Client:
    """A client of the API that appends every response it receives (status, headers and
    body) to ``sink``."""

    def keep(response: httpx.Response) -> None:
        response.read()
        request = response.request
        headers = "\n".join(f"{name}: {value}" for name, value in response.headers.items())
        sink.append(
            f"{request.method} {request.url} -> {response.status_code}\n{headers}\n{response.text}"
        )

    return httpx.Client(
        base_url=system.base_url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=timeout_s,
        event_hooks={"response": [keep]},
    )


def log_dump(workdir: Path) -> str:
    """Every log file the system's processes wrote, whole."""
    return "\n".join(
        f"--- {path.name}\n{path.read_text(errors='replace')}"
        for path in sorted(workdir.glob("*.log"))
    )


def redis_dump(url: str) -> str:
    """Every key of the Redis database at ``url`` (SCAN over the whole keyspace) with its
    value, read by type: strings, hashes, lists, sets, sorted sets and streams (XRANGE)."""
    client = redis.Redis.from_url(url)
    try:
        return "\n".join(_redis_entry(client, key) for key in sorted(client.scan_iter(count=1000)))
    finally:
        client.close()


def _redis_entry(client: redis.Redis, key: bytes) -> str:
    kind = _text(client.type(key))
    readers: dict[str, Callable[[], Any]] = {
        "string": lambda: client.get(key),
        "hash": lambda: client.hgetall(key),
        "list": lambda: client.lrange(key, 0, -1),
        "set": lambda: sorted(client.smembers(key)),
        "zset": lambda: client.zrange(key, 0, -1, withscores=True),
        "stream": lambda: client.xrange(key),
    }
    value = readers[kind]() if kind in readers else "(gone)"
    return f"{key.decode(errors='replace')} ({kind}): {_text(value)}"


def _text(value: Any) -> str:
    """A dumped value as text: bytes decoded (so JSON inside reads as written), recursively."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_text(k)}: {_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_text(item) for item in value) + "]"
    return str(value)


def store_dump(engine: Engine) -> str:
    """Every row of every table the store holds (as the database lists them), as text."""
    names = sqlalchemy.inspect(engine).get_table_names()
    lines = []
    with engine.connect() as connection:
        for name in sorted(names):
            table = sqlalchemy.Table(name, sqlalchemy.MetaData(), autoload_with=connection)
            for row in connection.execute(sqlalchemy.select(table)):
                lines.append(f"{name}: {_text(list(row))}")
    return "\n".join(lines)


def needles(secret: str, window: int = 12, stride: int = 4) -> set[str]:
    """What a leak of ``secret`` shows: the secret, its first 8 characters, and each
    ``window``-character piece of it (every ``stride`` characters), so that a secret shown
    in part (its first characters masked, the rest in clear) is found too."""
    found = {secret, secret[:8]}
    found.update(secret[i : i + window] for i in range(0, max(1, len(secret) - window + 1), stride))
    return {needle for needle in found if needle}


def leaks(secrets: Mapping[str, str], places: Mapping[str, str]) -> list[str]:
    """Where each secret (or a piece of it, see ``needles``) shows in each place's text."""
    found = []
    for name, secret in secrets.items():
        for place, text in places.items():
            hits = sorted(needle for needle in needles(secret) if needle in text)
            if hits:
                at = text.index(hits[0])
                context = text[max(0, at - 120) : at + 120].replace("\n", "\\n")
                found.append(f"{name} in {place} ({len(hits)} pieces), e.g. ...{context}...")
    return found
