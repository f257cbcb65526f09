"""``make run`` (``dispatcher dev``) from an empty folder: it serves the README's first run,
Ctrl-C stops every process it started and nothing complains, a second start reuses ./var, and
a runner killed outright takes its processes with it."""

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


def _ctrl_c(process: subprocess.Popen[bytes], workdir: Path) -> None:
    """What a terminal does on Ctrl-C: SIGINT to the whole foreground process group. Every
    process stops, the embedded Redis last: nothing complains of a lost connection."""
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=60) == 0
    assert not (workdir / "var" / "redis" / "redis.sock").exists()  # the server stopped
    said = (workdir / "dev.log").read_text()
    for complaint in ("Traceback", "[error", "[critical"):
        assert complaint not in said, said
    assert not _running_in(workdir), "processes of the dev runner outlived Ctrl-C"


def _running_in(workdir: Path) -> dict[int, str]:
    """The processes whose working directory is in ``workdir`` (every one the runner starts),
    by pid, with their command lines."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cwd = (proc / "cwd").resolve(strict=True)
            if cwd.is_relative_to(workdir.resolve()):
                found[int(proc.name)] = (
                    (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
        except OSError:  # gone, or not ours to read
            continue
    return found


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
        _ctrl_c(first, workdir)

    second = _start(workdir, port)
    try:
        _wait_up(base, second, workdir)
        assert (workdir / "var" / "dev-api-key").read_text().strip() == key
        again = httpx.get(f"{base}/v1/runs/{run['id']}", headers={"Authorization": f"Bearer {key}"})
        assert again.json()["status"] == "succeeded"
    finally:
        _ctrl_c(second, workdir)


def test_killed_outright_it_leaves_no_process_behind(tmp_path: Path) -> None:
    workdir = Path(shutil.copytree(Path(__file__).parent / "empty", tmp_path / "clone"))
    port = free_port()
    runner = _start(workdir, port)
    try:
        _wait_up(f"http://127.0.0.1:{port}", runner, workdir)
        assert len(_running_in(workdir)) > 1
        runner.kill()
        runner.wait(timeout=10)
        deadline = time.monotonic() + 40
        while _running_in(workdir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running_in(workdir)
    finally:
        for pid in _running_in(workdir):
            os.kill(pid, signal.SIGKILL)
