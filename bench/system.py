"""The processes under test: embedded Redis, the fake provider, the API and worker pools.

Each is a child process with its settings passed as ``DISPATCHER_*`` variables (none is read
from the caller's environment: a benchmark never touches the store or Redis ``make run`` uses),
logging to ``<workdir>/<name>.log``, and stopped with the harness (SIGTERM, then SIGKILL).
"""

import base64
import contextlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.runs import TERMINAL
from bench.target import BENCH_KEY, Target
from dispatcher.db import init_db, make_engine
from dispatcher.embedded_redis import EmbeddedRedis
from dispatcher.events import run_stream_name
from dispatcher.process import die_with_parent
from dispatcher.settings import Settings
from dispatcher.tenancy import create_tenant_with_key

NAMESPACE = "bench"
REPO = Path(__file__).resolve().parent.parent


def _default(name: str) -> Any:
    """The product's own default for a setting: the benchmark runs what users run."""
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class Tuning:
    """The settings the system runs under; recorded with every figure."""

    workers: int = 2
    worker_threads: int = _default("worker_threads")
    max_in_flight: int = _default("max_in_flight")
    worker_poll_ms: int = _default("worker_poll_ms")
    store_threads: int = _default("store_threads")
    log_level: str = _default("log_level")

    def env(self) -> dict[str, str]:
        return {
            "DISPATCHER_WORKER_THREADS": str(self.worker_threads),
            "DISPATCHER_MAX_IN_FLIGHT": str(self.max_in_flight),
            "DISPATCHER_WORKER_POLL_MS": str(self.worker_poll_ms),
            "DISPATCHER_STORE_THREADS": str(self.store_threads),
            "DISPATCHER_LOG_LEVEL": self.log_level,
        }

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def peak_rss_mib(pid: int, field: str = "VmHWM") -> float | None:
    """The process's peak resident set (Linux ``VmHWM``; ``VmRSS``: the current one), in MiB;
    None where unknown."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (Linux ``/proc/<pid>/stat``)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def raise_open_files_limit() -> int:
    """Lift the soft open-files limit to the hard one (children inherit it): a worker holding
    1,000 calls and the fake answering them need more than the usual 1,024 sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class BenchSystem:
    def __init__(self, workdir: Path, target: Target, tuning: Tuning) -> None:
        self.workdir = workdir.resolve()
        self.target = target
        self.tuning = tuning
        self.redis = EmbeddedRedis(self.workdir / "redis")
        self.database_url = f"sqlite:///{self.workdir / 'dispatcher.db'}"
        self.fake_port = free_port()
        self.api_port = free_port()
        self.fake_url = f"http://127.0.0.1:{self.fake_port}"
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.engine = make_engine(self.database_url)
        self.env: dict[str, str] = {}
        self.api_key = ""
        self.api: subprocess.Popen[bytes] | None = None
        self.fake: subprocess.Popen[bytes] | None = None
        #: Running worker pools by name (``worker-<n>``, also their log file's name).
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.spawned_workers = 0
        #: Name -> resident set (MiB) once the process was ready, before any load.
        self.ready_rss: dict[str, float | None] = {}
        #: Name -> exit code of each process that ended before it was asked to.
        self.early_exits: dict[str, int] = {}

    # -- start -------------------------------------------------------------------------------

    def start(self) -> None:
        """Redis, then the fake, the API and the platform credential, side by side."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = self._env(self.redis.start())
        init_db(self.engine)
        _, self.api_key = create_tenant_with_key(self.engine, "bench")
        self.fake = self._spawn(
            "fake", "bench.fake_provider", "--port", str(self.fake_port), "--key", BENCH_KEY
        )
        self.api = self._spawn("api", "dispatcher", "serve", "--port", str(self.api_port))
        secret = self.target.platform_secret()
        if secret is not None:
            self._cli("credential", "put-platform", self.target.pool, "--secret", secret)
        self._wait_http(f"{self.fake_url}/stats", "fake")
        self._wait_http(f"{self.api_url}/readyz", "api")
        self.ready_rss["api"] = peak_rss_mib(self.api.pid, "VmRSS")

    def _env(self, redis_url: str) -> dict[str, str]:
        inherited = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith("DISPATCHER_") and name not in ("DATABASE_URL", "REDIS_URL")
        }
        return (
            inherited
            | {
                "REDIS_URL": redis_url,
                "DATABASE_URL": self.database_url,
                "PORT": str(self.api_port),
                "DISPATCHER_ENVIRONMENT": "development",
                "DISPATCHER_VAR_DIR": str(self.workdir),
                # A key for this run only, so no process writes a development key file.
                "DISPATCHER_KEK": f"bench:{base64.b64encode(os.urandom(32)).decode()}",
                "DISPATCHER_LOG_FORMAT": "json",
                "DISPATCHER_REDIS_NAMESPACE": NAMESPACE,
                "DISPATCHER_POOLS": json.dumps([self.target.pool]),
            }
            | self.tuning.env()
            | self.target.env(self.fake_url)
        )

    def _spawn(self, name: str, module: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 (lives as long as the process)
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=log,
            preexec_fn=die_with_parent,
        )

    def _cli(self, *args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "dispatcher", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"dispatcher {args[0]} {args[1]} failed: {done.stderr.decode()}")

    def _wait_http(self, url: str, name: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not come up; see {self.workdir / (name + '.log')}")

    # -- worker pools ------------------------------------------------------------------------

    def start_workers(self, count: int) -> None:
        for _ in range(count):
            name = f"worker-{self.spawned_workers}"
            self.spawned_workers += 1
            self.workers[name] = self._spawn(name, "workers", self.target.pool)

    def wait_workers_ready(self, timeout_s: float = 60) -> None:
        """Until every running pool has said it started (a log line)."""
        deadline = time.monotonic() + timeout_s
        for name, process in self.workers.items():
            log = self.workdir / f"{name}.log"
            while b"worker pool started" not in (log.read_bytes() if log.exists() else b""):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"a worker pool did not start; see {log}")
                time.sleep(0.05)
            self.ready_rss.setdefault(name, peak_rss_mib(process.pid, "VmRSS"))

    def worker_rss(self) -> dict[str, float | None]:
        return {name: peak_rss_mib(process.pid) for name, process in self.workers.items()}

    def stop_workers(self) -> dict[str, float | None]:
        """Stop the running pools; their peak RSS, read just before."""
        peaks = self.worker_rss()
        self._note_exits(self.workers)
        _stop(list(self.workers.values()))
        self.workers = {}
        return peaks

    def _note_exits(self, processes: Mapping[str, subprocess.Popen[bytes] | None]) -> None:
        """Remember processes that ended before the harness stopped them."""
        for name, process in processes.items():
            if process is not None and process.poll() is not None:
                self.early_exits[name] = process.returncode

    # -- fake and queue ----------------------------------------------------------------------

    def fake_stats(self, reset: bool = False) -> dict[str, int]:
        if reset:
            httpx.post(f"{self.fake_url}/stats/reset", timeout=5).raise_for_status()
        stats: dict[str, int] = httpx.get(f"{self.fake_url}/stats", timeout=5).json()
        return stats

    def flush_queues(self) -> int:
        """Delete every key of the bench's Redis namespace (no pool may be running)."""
        client = redis.Redis.from_url(self.redis.url)
        keys = list(client.scan_iter(match=f"{NAMESPACE}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        return len(keys)

    def terminal_event_times(self, run_ids: list[str]) -> dict[str, float]:
        """Run id -> when its terminal event was published (the event's own ``at``, epoch s)."""
        client = redis.Redis.from_url(self.redis.url)
        pipe = client.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.xrevrange(run_stream_name(NAMESPACE, run_id), count=1)
        found: dict[str, float] = {}
        for run_id, entries in zip(run_ids, pipe.execute(), strict=True):
            for _, fields in entries:
                event = json.loads(fields[b"event"])
                if event["type"] in TERMINAL:
                    found[run_id] = float(event["at"])
        client.close()
        return found

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by the API and by the running worker pools together."""
        api = cpu_seconds(self.api.pid) if self.api else 0.0
        return {"api": api, "workers": sum(cpu_seconds(p.pid) for p in self.workers.values())}

    def api_rss(self) -> float | None:
        return peak_rss_mib(self.api.pid) if self.api else None

    def fake_rss(self) -> float | None:
        return peak_rss_mib(self.fake.pid) if self.fake else None

    def stop(self) -> None:
        self._note_exits({**self.workers, "api": self.api, "fake": self.fake})
        _stop([*self.workers.values(), *(p for p in (self.api, self.fake) if p is not None)])
        self.workers = {}
        self.engine.dispose()
        self.redis.stop()


def _stop(processes: list[subprocess.Popen[bytes]], timeout_s: float = 40) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def logged_errors(workdir: Path) -> dict[str, dict[str, int]]:
    """Error lines in each process's JSON log, counted by their exception's last line."""
    found: dict[str, dict[str, int]] = {}
    for log in sorted(workdir.glob("*.log")):
        counts: dict[str, int] = {}
        for line in log.read_text(errors="replace").splitlines():
            entry = _json_line(line)
            if entry.get("level") not in ("error", "critical"):
                continue
            key = _error_key(entry)
            counts[key] = counts.get(key, 0) + 1
        if counts:
            found[log.stem] = counts
    return found


def _error_key(entry: dict[str, object]) -> str:
    """The exception's own line (``module.Error: message``), else the event and error type."""
    lines = str(entry.get("exception") or "").splitlines()
    raised = [line for line in lines if re.match(r"[\w.]+(Error|Exception|Timeout)\b", line)]
    if raised:
        return raised[-1][:200]
    return " ".join(str(entry.get(k, "")) for k in ("event", "error_type")).strip()[:200]


def _json_line(line: str) -> dict[str, object]:
    if not line.startswith("{"):
        return {}
    with contextlib.suppress(ValueError):
        entry = json.loads(line)
        if isinstance(entry, dict):
            return entry
    return {}
