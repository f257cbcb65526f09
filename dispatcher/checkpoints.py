"""SQLite's WAL checkpoints, moved off the commits of a busy process.

In WAL mode a commit appends pages to the log, and the commit that takes the log past
``wal_autocheckpoint`` pages (1,000 by default) copies the log back into the database file
before it returns. At 200 runs a second (about 16 pages a run: its row, its claim, its
outcome, their indexes) that is four such commits a second across the API and the workers,
each stalled 4 ms or more (`docs/performance.md`): the tail of every stage that commits.

A long-lived process that writes a lot (the API, a worker pool) starts a ``WalCheckpointer``.
Its engine's connections then checkpoint in a commit only past ``BACKSTOP_PAGES``, should
the thread fall behind, and a thread checkpoints every ``interval_s`` instead: ``PASSIVE``,
so it neither waits for nor blocks a reader or a writer, and SQLite releases the GIL while it
copies. Several processes doing so is harmless: one checkpoint runs at a time, and the others
find nothing to copy or the checkpoint busy. On Postgres it does nothing.
"""

import threading

import structlog
from sqlalchemy import Engine, event
from sqlalchemy.exc import SQLAlchemyError

log = structlog.get_logger(__name__)

#: Log pages past which a commit checkpoints after all (about 40 MiB of log).
BACKSTOP_PAGES = 10_000
#: How often the thread checkpoints.
INTERVAL_S = 0.2


class WalCheckpointer:
    def __init__(self, engine: Engine, interval_s: float = INTERVAL_S) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoints", daemon=True)

    @property
    def applies(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def start(self) -> None:
        """From now on, the engine's commits leave the log to the thread (SQLite only)."""
        if not self.applies:
            return
        event.listen(self.engine, "connect", _backstop_only)
        self.engine.dispose()  # connections pooled before would still checkpoint in commits
        self._thread.start()
        log.info("store log checkpointed in the background", interval_s=self.interval_s)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def checkpoint(self) -> int:
        """Copy the log's pages into the database file as far as readers allow; the pages
        the log held (-1: the database keeps no log, as in memory)."""
        with self.engine.connect() as connection:
            row = connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
        return int(row[1])

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.checkpoint()
            except SQLAlchemyError as exc:  # busy or locked: the next turn tries again
                log.debug("WAL checkpoint skipped", error=type(exc).__name__)


def _backstop_only(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
    cursor.close()
