"""What the machine is, and how fast at what the system does most: two figures that let runs
on different machines be compared.

The same code gave half the throughput on one 2-core machine that it gave on another, whose
Python ran at the same speed: the difference was in what crossing between processes costs
(system calls, wake-ups, loopback TCP). So each run records both:

- ``python_loop_us``: ``sum(range(1000))``, best of several, in microseconds: pure Python.
- ``loopback_round_trip_us``: one byte to another process over loopback TCP and back, the
  median of many, in microseconds: what every hop between the system's processes pays.
"""

import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path
from typing import Any

ROUND_TRIPS = 2000

_ECHO = """
import socket, sys
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
print(server.getsockname()[1], flush=True)
connection, _ = server.accept()
connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while data := connection.recv(64):
    connection.sendall(data)
"""


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "python_loop_us": python_loop_us(),
        "loopback_round_trip_us": loopback_round_trip_us(),
    }


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return None
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else None


def python_loop_us(number: int = 5000) -> float:
    best = min(timeit.repeat("sum(range(1000))", number=number, repeat=7))
    return round(best / number * 1e6, 2)


def loopback_round_trip_us(count: int = ROUND_TRIPS) -> float:
    """The median time of ``count`` one-byte round trips to an echoing child process."""
    echo = subprocess.Popen([sys.executable, "-c", _ECHO], stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None
        port = int(echo.stdout.readline())
        with socket.create_connection(("127.0.0.1", port)) as connection:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            times = []
            for _ in range(count):
                started = time.perf_counter()
                connection.sendall(b"x")
                connection.recv(64)
                times.append(time.perf_counter() - started)
    finally:  # it ends when the connection closes; killed if it never got one
        echo.kill()
        echo.wait()
    return round(statistics.median(times) * 1e6, 1)


def describe(found: dict[str, Any]) -> str:
    """One line for the report's head."""
    return (
        f"machine: {found['cpus']} CPUs ({found.get('cpu_model') or 'model unknown'}), "
        f"load {found['load_average'][0]}; sum(range(1000)) {found.get('python_loop_us')} us; "
        f"loopback round trip between processes {found.get('loopback_round_trip_us')} us"
    )
