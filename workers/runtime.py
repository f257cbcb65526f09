"""The asyncio side of a worker process.

dramatiq's worker threads only claim runs; each provider call then runs as a task on
one event loop, so a process holds up to ``max_in_flight`` calls with a handful of
threads. A bounded semaphore is the backpressure: when it is full, worker threads wait
and dramatiq stops prefetching. Outcomes are written to the store by a small thread
pool, so a slow write never stalls the loop.
"""

import asyncio
import contextvars
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import structlog

T = TypeVar("T")

log = structlog.get_logger(__name__)


class Runtime:
    def __init__(self, max_in_flight: int, store_threads: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.slots = threading.BoundedSemaphore(max_in_flight)
        self.store_pool = ThreadPoolExecutor(store_threads, thread_name_prefix="store")
        #: Runs this process holds: run id -> claim token (their leases are renewed).
        self.held: dict[str, str] = {}
        self._thread = threading.Thread(target=self._serve, name="provider-calls", daemon=True)
        self._idle = threading.Condition()
        self._in_flight = 0

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def spawn(self, coro: Coroutine[Any, Any, None]) -> Future[None]:
        """Run ``coro`` on the loop; the caller must already hold a slot, released when it ends."""
        with self._idle:
            self._in_flight += 1
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        future.add_done_callback(self._release)
        return future

    def _release(self, future: Future[None]) -> None:
        self.slots.release()
        if not future.cancelled() and future.exception() is not None:
            error = future.exception()
            log.error("a run's task failed", error_type=type(error).__name__, exc_info=error)
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    async def in_store_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking store work off the loop, keeping the caller's log context."""
        context = contextvars.copy_context()
        return await self.loop.run_in_executor(self.store_pool, context.run, fn, *args)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop from another thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def drain(self, timeout_s: float) -> bool:
        """Wait for in-flight calls to finish; False if some are still running at the timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout_s)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.store_pool.shutdown(wait=True)
