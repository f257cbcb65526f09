"""The asyncio side of a worker process.

dramatiq's worker threads only claim work (a run's hop, a webhook delivery); each call then
runs as a task on one event loop, so a process holds up to ``max_in_flight`` calls with a
handful of threads. A bounded semaphore is the backpressure: a thread takes a slot before it
claims, the task it starts gives the slot back when it ends, and when every slot is taken,
worker threads wait and dramatiq stops prefetching. Blocking store work a task needs runs on a
small thread pool, so it never stalls the loop.
"""

import asyncio
import contextvars
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
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
        self._tasks: set[asyncio.Task[None]] = set()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` on the loop; the caller must already hold a slot, released when it ends."""
        self.spawn_all([coro])

    def spawn_all(self, coros: Sequence[Coroutine[Any, Any, None]]) -> None:
        """``spawn`` each of ``coros``, all in one hop to the loop."""
        if not coros:
            return
        with self._idle:
            self._in_flight += len(coros)
        self.loop.call_soon_threadsafe(self._create, coros)

    def _create(self, coros: Sequence[Coroutine[Any, Any, None]]) -> None:
        for coro in coros:
            task = self.loop.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._release)

    def _release(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.slots.release()
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.error("a run's task failed", error_type=type(error).__name__, exc_info=error)
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def resolve(self, futures: Sequence[asyncio.Future[None]]) -> None:
        """From another thread: complete loop futures (tasks wait on them), in one hop."""
        if futures:
            self.loop.call_soon_threadsafe(_resolve, futures)

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


def _resolve(futures: Sequence[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)
