"""Fewer malloc arenas in a worker process.

glibc gives threads that allocate at the same time arenas of their own, up to eight per core,
and an arena keeps what was freed in it for its own later use. A worker process runs dozens of
threads (dramatiq's, the event loop's, the store writer's), so its resident set grows with
arenas that each hold a little free memory. Two arenas are enough for threads that mostly wait
(the allocations that matter happen on the event loop and the writer), as ``MALLOC_ARENA_MAX=2``
would set; an operator's own ``MALLOC_ARENA_MAX`` is left alone.
"""

import ctypes
import ctypes.util
import os

#: ``mallopt``'s parameter for the arena cap (``malloc.h``).
M_ARENA_MAX = -8
ARENAS = 2


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
