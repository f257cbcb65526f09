"""The real system in child processes: the API under uvicorn and worker pools, on given
Redis and store URLs. End-to-end tests drive it over HTTP."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import Session

from dispatcher.db import init_db, make_engine
from dispatcher.settings import Settings
from dispatcher.store import tenants
from tests.support.backends import settings_env

TERMINAL = {"succeeded", "failed", "canceled", "expired"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class System:
    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.engine = make_engine(settings.resolved_database_url)
        init_db(self.engine)
        self.env = os.environ | settings_env(settings) | {"PORT": str(self.port)}
        self.processes: list[subprocess.Popen[bytes]] = []

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            [sys.executable, "-m", *args], env=self.env, cwd=self.workdir, stdout=log, stderr=log
        )
        self.processes.append(process)
        return process

    def start_api(self) -> subprocess.Popen[bytes]:
        process = self._spawn("api", "dispatcher", "serve", "--port", str(self.port))
        self.wait_healthy()
        return process

    def start_worker(self, *providers: str, name: str = "worker") -> subprocess.Popen[bytes]:
        return self._spawn(name, "workers", *(providers or ("simulated",)))

    def wait_healthy(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"API did not come up; see {self.workdir / 'api.log'}")

    def new_tenant(self, name: str) -> str:
        """A tenant and its API key, made straight in the store."""
        with Session(self.engine) as session:
            tenant = tenants.create_tenant(session, name)
            key = tenants.create_api_key(session, tenant.id)
            session.commit()
        return key

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=10
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-4000:]}" for p in self.workdir.glob("*.log")
        )

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
        self.engine.dispose()


def wait_for_run(
    client: httpx.Client, run_id: str, timeout_s: float = 30, until: set[str] | None = None
) -> Any:
    """Poll ``GET /v1/runs/{id}`` until its status is in ``until`` (default: terminal)."""
    wanted = until or TERMINAL
    deadline = time.monotonic() + timeout_s
    while True:
        run = client.get(f"/v1/runs/{run_id}").json()
        if run["status"] in wanted:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} still {run['status']} after {timeout_s}s")
        time.sleep(0.05)
