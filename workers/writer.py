"""The store writer: the one thread of a worker process that writes runs' state, in batches.

    dramatiq worker threads --claim(run, hop), wait--.
                                                     +--> a cycle: claim every waiting run in one
    event loop tasks --------record(finished)--------'    transaction and start their calls;
                                                          record every finished attempt in one
                                                          transaction; then send what both
                                                          announce (one Redis round trip)

A cycle takes everything that arrived while the last one ran, so a lone run waits for nothing
and batches grow with the load: the cost of a statement, a commit and a round trip is shared by
the runs of a batch. Claims come first in a cycle (a provider call waits on them), outcomes
next, and nothing is announced before its commit. On SQLite this is also the process's one
writer, so its threads never queue on the file's lock.
"""

import threading
from collections.abc import Callable

import structlog

from workers.announce import Outbox
from workers.claiming import Ask, Claimer
from workers.recording import Finished, Pending, Recorder

log = structlog.get_logger(__name__)

#: Outcomes written in one transaction at most (more wait for the next cycle).
MAX_OUTCOMES = 500
#: How long outcomes the store refused wait before they are tried again.
RETRY_S = 0.5


class StoreWriter:
    def __init__(
        self,
        claimer: Claimer,
        recorder: Recorder,
        send: Callable[[Outbox], None],
    ) -> None:
        self.claimer = claimer
        self.recorder = recorder
        self.send = send
        self._asks: list[Ask] = []
        self._finished: list[Finished] = []
        self._retry: Pending | None = None
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish what was handed in, then end."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=30)

    @property
    def waiting(self) -> int:
        """Claims and outcomes handed in for the next cycle."""
        return len(self._asks) + len(self._finished)

    def claim(self, run_id: str, hop_index: int, waited: bool = False) -> bool:
        """From a worker thread: claim the run at ``hop_index`` (``waited``: a client waits on
        it) and start its call; wait for the answer (True: started; False: nothing to do). A
        store error is raised."""
        ask = Ask(run_id, hop_index, waited)
        with self._wake:
            self._asks.append(ask)
            self._wake.notify()
        return ask.answer.result()

    def record(self, finished: Finished) -> None:
        """From the event loop: record the attempt in the next cycle (``finished.recorded`` is
        resolved once it is, or once it was given up)."""
        with self._wake:
            self._finished.append(finished)
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(self._due, timeout=RETRY_S if self._retry else None)
                asks, self._asks = self._asks, []
                finished = self._finished[:MAX_OUTCOMES]
                del self._finished[:MAX_OUTCOMES]
                if self._stopping and not (asks or finished or self._retry):
                    return
            try:
                self._cycle(asks, finished)
            except Exception as exc:  # a bug: no thread may wait forever, no slot stay taken
                log.exception("store writer cycle failed")
                for ask in asks:
                    if not ask.answer.done():
                        ask.answer.set_exception(exc)
                retry, self._retry = self._retry, None
                waiting = [done.recorded for done in finished] + (retry.waiting if retry else [])
                self.recorder.runtime.resolve(waiting)

    def _due(self) -> bool:
        return bool(self._asks or self._finished or self._stopping)

    def _cycle(self, asks: list[Ask], finished: list[Finished]) -> None:
        outbox = Outbox()
        if asks:
            self.claimer.claim(asks, outbox)
        pending = self._retry or Pending()
        for done in finished:
            pending.add(self.recorder.decide(done), done.recorded)
        self._retry = self.recorder.record(pending, outbox) if pending.outcomes else None
        self.send(outbox)
