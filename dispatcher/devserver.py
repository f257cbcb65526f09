"""``dispatcher dev`` (what ``make run`` starts): everything on one machine.

Embedded Redis unless ``REDIS_URL`` is set, SQLite under ``var/`` unless ``DATABASE_URL``
is set, the API, the worker pool processes of ``settings.pools`` (the simulated shared
compute, and every tenant-key provider in one more process), the webhook delivery pool, and
a development tenant whose key is printed and written to ``var/dev-api-key``.

Ctrl-C stops every process it started, in order: each child runs in a session of its own, so
the terminal's SIGINT reaches this process alone, which sends SIGTERM to the API and the pools,
waits for them to finish what they hold, and stops Redis last. A child dies with this process
should it be killed outright.
"""

import os
import signal
import subprocess
import sys
import time

import structlog

from dispatcher.db import init_db, make_engine
from dispatcher.embedded_redis import EmbeddedRedis
from dispatcher.process import die_with_parent
from dispatcher.settings import Settings
from dispatcher.tenancy import ensure_dev_key

log = structlog.get_logger(__name__)


def run_dev(settings: Settings) -> int:
    stop = _StopRequest()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    embedded = None if settings.redis_url else EmbeddedRedis(settings.embedded_redis_dir)
    redis_url = embedded.start() if embedded else str(settings.redis_url)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    key = ensure_dev_key(engine, settings.var_dir / "dev-api-key")
    engine.dispose()
    env = os.environ | {"REDIS_URL": redis_url, "DATABASE_URL": settings.resolved_database_url}
    children = [_spawn(["dispatcher", "serve"], env)]
    children += [_spawn(["workers", *pool.split(",")], env) for pool in settings.pools]
    children.append(_spawn(["workers", "--webhooks"], env))
    _banner(settings, key)
    try:
        return _supervise(children, stop)
    finally:
        _stop(children)
        if embedded:
            embedded.stop()


class _StopRequest:
    """Set by SIGINT or SIGTERM, from the moment it is made."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGINT, self._request)
        signal.signal(signal.SIGTERM, self._request)

    def _request(self, *_: object) -> None:
        self.requested = True


def _spawn(module_and_args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", *module_and_args],
        env=env,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )


def _supervise(children: list[subprocess.Popen[bytes]], stop: _StopRequest) -> int:
    while not stop.requested:
        for child in children:
            if child.poll() is not None:
                log.error(
                    "a process exited; stopping the rest", args=child.args, code=child.returncode
                )
                return 1
        time.sleep(0.2)
    return 0


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 35
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()


def _banner(settings: Settings, key: str) -> None:
    url = f"http://{settings.host}:{settings.port}"
    print(
        f"\n  dispatcher running at {url}  (docs: {url}/docs)\n"
        f"  dev API key: {key}  (also in {settings.var_dir / 'dev-api-key'})\n"
        f'  try: curl -H "Authorization: Bearer $(cat {settings.var_dir / "dev-api-key"})" '
        f'-d \'{{"app":"simulated/echo","input":{{"prompt":"hi"}}}}\' {url}/v1/run\n'
        "  Ctrl-C stops everything.\n",
        flush=True,
    )
