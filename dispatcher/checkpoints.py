"""SQLite's WAL checkpoints, moved off the commits of a busy process.

In WAL mode a commit appends pages to the log, and the commit that takes the log past
``wal_autocheckpoint`` pages (1,000 by default) copies the log back into the database file
before it returns. At 200 runs a second (about 16 pages a run: its row, its claim, its
outcome, their indexes) that is four such commits a second across the API and the workers,
each stalled 4 ms or more (`docs/performance.md`): the tail of every stage that commits.

A long-lived process that writes a lot (the API, a worker pool) starts a ``WalCheckpointer``.
Its engine's connections then checkpoint in a commit only past ``BACKSTOP_PAGES``, should
the thread fall behind, and a thread checkpoints instead: ``PASSIVE``, so it neither waits
for nor blocks a reader or a writer, and SQLite releases the GIL while it copies. Several
processes doing so is harmless: one checkpoint runs at a time, and the others find nothing
to copy or the checkpoint busy. On Postgres it does nothing.

The thread looks every ``interval_s`` and checkpoints once the log holds ``threshold_pages``
not yet copied, as often as SQLite's own commits would. A checkpoint syncs the log and the
database file to disk; on a virtual disk such a sync took up to 350 ms, and the commits of
every process writing the store stalled behind it for up to 90 ms (ext4 orders the writes
of all files behind a sync). Checkpointing every 200 ms whatever the log held synced about
22 times a second across three processes at 5 runs a second, and put those stalls in the
tail of a quiet system.
The pages waiting are read from the store's wal-index (``<store>-shm``, its header's
``mxFrame`` less its ``nBackfill``: https://www.sqlite.org/walformat.html), a 100-byte read
that takes no lock. Where it cannot be read, the thread does nothing and the commits'
backstop keeps the log bounded.
"""

import struct
import threading
from pathlib import Path

import structlog
from sqlalchemy import Engine, event
from sqlalchemy.exc import SQLAlchemyError

log = structlog.get_logger(__name__)

#: Log pages past which a commit checkpoints after all (about 40 MiB of log).
BACKSTOP_PAGES = 10_000
#: How often the thread looks at the log.
INTERVAL_S = 0.2
#: Pages waiting in the log past which the thread checkpoints (SQLite's own default).
THRESHOLD_PAGES = 1_000


class WalCheckpointer:
    def __init__(
        self,
        engine: Engine,
        interval_s: float = INTERVAL_S,
        threshold_pages: int = THRESHOLD_PAGES,
    ) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.threshold_pages = threshold_pages
        database = engine.url.database
        self._shm = Path(f"{database}-shm") if database else None
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
        log.info(
            "store log checkpointed in the background",
            interval_s=self.interval_s,
            threshold_pages=self.threshold_pages,
        )

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

    @property
    def waiting_pages(self) -> int:
        """Pages in the log not yet copied into the database file (0 if unknown)."""
        return pages_waiting(self._shm) if self._shm is not None else 0

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.waiting_pages < self.threshold_pages:
                continue
            try:
                self.checkpoint()
            except SQLAlchemyError as exc:  # busy or locked: the next turn tries again
                log.debug("WAL checkpoint skipped", error=type(exc).__name__)


def _backstop_only(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
    cursor.close()


#: The wal-index header (two copies, the second from byte 48) and ``nBackfill`` after it.
_HEADER = struct.Struct("=16xI28x")
_BACKFILL = struct.Struct("=96xI")


def pages_waiting(shm: Path) -> int:
    """The log's frames not yet copied into the database file, from the wal-index ``shm``;
    0 when it cannot be read or is being written (its header's two copies differ)."""
    try:
        with shm.open("rb") as file:
            head = file.read(_BACKFILL.size)
    except OSError:
        return 0
    if len(head) < _BACKFILL.size or head[:48] != head[48:96]:
        return 0
    frames: int = _HEADER.unpack_from(head)[0]
    copied: int = _BACKFILL.unpack_from(head)[0]
    return max(frames - copied, 0)
