"""``make run`` (``dispatcher dev``) from an empty folder: it serves the README's first run,
Ctrl-C stops every process it started, and a second start reuses ./var."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.system import free_port, wait_for_run

pytestmark = pytest.mark.e2e


def _start(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DISPATCHER_", "REDIS_URL", "DATABASE_URL"))
    }
    log = open(workdir / "dev.log", "ab")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "dev"],
        cwd=workdir, env=env | {"PORT": str(port)}, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip


def _wait_up(base: str, process: subprocess.Popen[bytes], workdir: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, (workdir / "dev.log").read_text()
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError((workdir / "dev.log").read_text())


def _ctrl_c(process: subprocess.Popen[bytes]) -> None:
    """What a terminal does on Ctrl-C: SIGINT to the whole foreground process group."""
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=60)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError("processes of the dev runner outlived Ctrl-C")


def test_make_run_serves_a_run_stops_cleanly_and_keeps_its_data(tmp_path: Path) -> None:
    workdir = Path(shutil.copytree(Path(__file__).parent / "empty", tmp_path / "clone"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    first = _start(workdir, port)
    try:
        _wait_up(base, first, workdir)
        key = (workdir / "var" / "dev-api-key").read_text().strip()
        assert key in (workdir / "dev.log").read_text()
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"})
        accepted = client.post(
            "/v1/run", content=b'{"app":"simulated/echo","input":{"prompt":"hi"}}',
            headers={"content-type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        assert accepted.status_code == 202
        run = wait_for_run(client, accepted.json()["id"], timeout_s=20)
        assert run["status"] == "succeeded" and run["output"]["text"] == "hi"
    finally:
        _ctrl_c(first)

    second = _start(workdir, port)
    try:
        _wait_up(base, second, workdir)
        assert (workdir / "var" / "dev-api-key").read_text().strip() == key
        again = httpx.get(f"{base}/v1/runs/{run['id']}", headers={"Authorization": f"Bearer {key}"})
        assert again.json()["status"] == "succeeded"
    finally:
        _ctrl_c(second)
