"""Write transactions on the run path, taking turns in the kernel on SQLite.

SQLite lets one connection write at a time. One that finds the write lock taken calls its busy
handler, which sleeps 1 ms, then 2, 5, 10, 15 and up to 100 ms between tries, whenever the lock
is in fact given back. With the API and two worker pools writing at 200 runs a second, that
was hundreds of sleeps a second across the processes (`docs/performance.md`): a writer that
came 50 us too late waited a millisecond or more.

``writing(engine)`` is ``engine.begin()`` for the run path's writers (the API's intake, the
workers' claims, outcomes, parks and sweeps). On a SQLite file they first take their turn: a
thread lock within the process, then an exclusive ``flock`` on ``<file>-writers`` across
processes, held until the transaction has committed. A writer waiting for its turn blocks in
the kernel and is woken the moment the lock is let go, so SQLite's own lock is free when it
asks. Other writers (the API's configuration routes, the command line) still rely on the busy
handler; they are rare. On Postgres, and on a SQLite database in memory, it is
``engine.begin()``.
"""

import fcntl
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from sqlalchemy import Connection, Engine


class _Turn:
    """The turn to write one SQLite file, for the threads of this process and the others."""

    def __init__(self, path: Path) -> None:
        self.lock = threading.Lock()
        self.fd = os.open(f"{path}-writers", os.O_RDWR | os.O_CREAT, 0o600)

    @contextmanager
    def taken(self) -> Iterator[None]:
        with self.lock:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)


_TURNS: "weakref.WeakKeyDictionary[Engine, _Turn]" = weakref.WeakKeyDictionary()


def take_turns(engine: Engine, path: Path) -> None:
    """The run path's writers on ``engine`` (a SQLite file at ``path``) take turns; where the
    lock file cannot be made (a folder this process may only read), they do not."""
    try:
        turn = _TURNS[engine] = _Turn(path)
    except OSError:
        return
    weakref.finalize(engine, os.close, turn.fd)


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """``engine.begin()``, once it is this writer's turn (see the module's docstring)."""
    turn = _TURNS.get(engine)
    with turn.taken() if turn is not None else nullcontext(), engine.begin() as connection:
        yield connection
