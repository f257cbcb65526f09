"""What the machine is, and how fast at what the system does most: two figures that let runs
on different machines be compared.

The same code gave half the throughput on one 2-core machine that it gave on another, whose
Python ran at the same speed: the difference was in what crossing between processes costs
(system calls, wake-ups, loopback TCP). So each run records both:

- ``python_loop_us``: ``sum(range(1000))``, best of several, in microseconds: pure Python.
- ``loopback_round_trip_us``: one byte to another process over loopback TCP and back, the
  median of many, in microseconds: what every hop between the system's processes pays.

A virtual machine's speed also changes while it runs, with what its neighbours on the same
host do: on one machine the round trip went from 19 to 342 us within the hour, and every
figure with it. So the run also records, at its end (``during``), the round trip measured
again and ``stolen_share``: the share of the machine's CPU time the hypervisor gave to others
during the run (``steal`` in ``/proc/stat``).
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


def cpu_ticks(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(stolen, all) CPU time of the machine so far, in ticks; None where not known."""
    try:
        first = stat.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if first[:1] != ["cpu"] or len(first) < 9:
        return None
    ticks = [int(value) for value in first[1:9]]  # user .. steal; guest is inside user
    return ticks[7], sum(ticks)


def during(ticks_before: tuple[int, int] | None) -> dict[str, Any]:
    """What the machine did over the run, read at its end (see the module's docstring)."""
    ticks_after = cpu_ticks()
    stolen = None
    if ticks_before and ticks_after and ticks_after[1] > ticks_before[1]:
        share = (ticks_after[0] - ticks_before[0]) / (ticks_after[1] - ticks_before[1])
        stolen = round(share, 4)
    return {
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "loopback_round_trip_us_after": loopback_round_trip_us(),
        "stolen_share": stolen,
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


def describe_during(found: dict[str, Any]) -> str:
    """One line for the report's end: how the machine changed while the run went on."""
    stolen = found.get("stolen_share")
    share = "unknown" if stolen is None else f"{stolen:.1%}"
    return (
        f"during the run: CPU time stolen by the hypervisor {share}; loopback round trip "
        f"{found.get('loopback_round_trip_us')} us at the start, "
        f"{found.get('loopback_round_trip_us_after')} us at the end"
    )
