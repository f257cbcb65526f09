"""What every long-running process (the API, a worker pool) does as it starts.

**Fewer malloc arenas** (``limit_arenas``, before threads start). glibc gives threads that
allocate at the same time arenas of their own, up to eight per core, and an arena keeps what
was freed in it for its own later use. A worker process runs dozens of threads (dramatiq's,
the event loop's, the store writer's), so its resident set grows with arenas that each hold a
little free memory. Two arenas are enough for threads that mostly wait, as
``MALLOC_ARENA_MAX=2`` would set; an operator's own ``MALLOC_ARENA_MAX`` is left alone.

**No full collections of the start-up heap** (``settle_heap``, once started). CPython's cyclic
garbage collector walks every tracked object of the generation it collects, and a full
collection walks everything the process made as it started: its modules, classes, pydantic
schemas and SQLAlchemy tables, over a hundred thousand objects. That stopped a worker process
for 30-150 ms at a time, every call it held with it, and showed as the tail of a waiting
client's latency. ``settle_heap`` collects what starting left behind, then moves every object
still alive to the collector's permanent generation (``gc.freeze``), which no collection walks
again. Objects made later are collected as before.

**Stopped with the process that started it** (``die_with_parent``, as a child's
``preexec_fn``). A process started by another (the embedded Redis, the processes of
``dispatcher dev``) is sent SIGTERM by Linux when its starter dies, even by SIGKILL.
"""

import contextlib
import ctypes
import ctypes.util
import gc
import os
import signal

#: ``mallopt``'s parameter for the arena cap (``malloc.h``).
M_ARENA_MAX = -8
ARENAS = 2
#: ``prctl``'s option for the signal sent when the parent dies (``linux/prctl.h``).
PR_SET_PDEATHSIG = 1


def limit_arenas(count: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``count`` before threads start; False where that was not
    done (the environment sets the cap, or the C library is not glibc)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_ARENA_MAX, count))


def settle_heap() -> int:
    """Collect what starting left, and keep every object alive now out of later collections
    (see the module's docstring); the objects frozen so far."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def die_with_parent() -> None:
    """In a child, before it runs: be sent SIGTERM when the process that started it dies
    (Linux only; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
