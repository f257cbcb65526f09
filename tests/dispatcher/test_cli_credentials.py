"""``dispatcher credential put-platform``: the credential is stored in the vault and every
running process hears that the owner's configuration changed."""

import threading
import uuid
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from sqlmodel import Session

from dispatcher.changes import ChangeListener, OwnerCache
from dispatcher.cli import main
from dispatcher.db import init_db, make_engine
from dispatcher.settings import Settings
from dispatcher.store.credentials import load_secret
from dispatcher.vault import PLATFORM_OWNER, keyring_for


class NotedCache(OwnerCache[str, int]):
    def __init__(self) -> None:
        super().__init__(ttl_s=60)
        self.dropped = threading.Event()

    def drop(self, owner: str | None) -> None:
        super().drop(owner)
        if owner == PLATFORM_OWNER:
            self.dropped.set()


def test_put_platform_stores_the_key_and_announces_the_change(
    tmp_path: Path, embedded_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = f"cli{uuid.uuid4().hex[:6]}"
    database_url = f"sqlite:///{tmp_path / 'store.db'}"
    for name, value in {
        "DATABASE_URL": database_url,
        "REDIS_URL": embedded_redis_url,
        "DISPATCHER_VAR_DIR": str(tmp_path / "var"),
        "DISPATCHER_REDIS_NAMESPACE": namespace,
    }.items():
        monkeypatch.setenv(name, value)
    engine = make_engine(database_url)
    init_db(engine)
    client = redis.Redis.from_url(embedded_redis_url)
    cache = NotedCache()
    listener = ChangeListener(client, namespace, [cache])
    listener.start()
    try:
        assert listener.subscribed.wait(5)
        secret = '{"api_key": "sk-platform-0123456789"}'
        command = ["credential", "put-platform", "openai", "--secret", secret]
        done = CliRunner().invoke(main, command)
        assert done.exit_code == 0, done.output
        assert "sk-platform" not in done.output
        assert cache.dropped.wait(5)
        with Session(engine) as session:
            stored = load_secret(session, keyring_for(Settings()), PLATFORM_OWNER, "openai")
        assert stored is not None and stored.provider == "openai"
    finally:
        listener.stop()
        client.close()
        engine.dispose()
