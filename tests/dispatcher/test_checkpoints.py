"""WAL checkpoints moved off the commits of the API and the worker pools
(``dispatcher.checkpoints``)."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from dispatcher.checkpoints import WalCheckpointer, pages_waiting
from dispatcher.db import make_engine

PAGE = 4096
#: Enough transactions to take the log well past SQLite's default of 1,000 pages.
TRANSACTIONS = 700


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Engine, Path]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE blob (id INTEGER PRIMARY KEY, body BLOB)"))
    yield engine, tmp_path / "store.db"
    engine.dispose()


def write(engine: Engine, transactions: int = TRANSACTIONS) -> None:
    """One row of two pages a transaction, each committed on its own, as runs are."""
    for _ in range(transactions):
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO blob (body) VALUES (zeroblob(6000))"))


def log_pages(path: Path) -> int:
    return Path(f"{path}-wal").stat().st_size // PAGE


def test_without_it_a_commit_checkpoints_once_the_log_passes_1000_pages(
    store: tuple[Engine, Path],
) -> None:
    """The control: SQLite's default, which the checkpointer changes."""
    engine, path = store
    write(engine)
    assert log_pages(path) < 1_100


def test_its_commits_leave_the_log_to_the_checkpointer(store: tuple[Engine, Path]) -> None:
    engine, path = store
    checkpoints = WalCheckpointer(engine, interval_s=3600)  # its thread never gets a turn
    checkpoints.start()
    try:
        size = path.stat().st_size
        write(engine)
        assert log_pages(path) > 1_400
        assert path.stat().st_size == size  # no page reached the database file yet
        assert checkpoints.checkpoint() > 1_400
        assert path.stat().st_size > size + 1_000 * PAGE  # the rows, copied in
    finally:
        checkpoints.stop()


def test_the_pages_waiting_are_read_from_the_wal_index(store: tuple[Engine, Path]) -> None:
    engine, path = store
    checkpoints = WalCheckpointer(engine, interval_s=3600)
    checkpoints.start()
    try:
        write(engine, 30)
        waiting = checkpoints.waiting_pages
        assert waiting > 60
        assert checkpoints.checkpoint() == waiting  # SQLite's own count of the log's frames
        assert checkpoints.waiting_pages == 0
        write(engine, 2)
        assert 0 < checkpoints.waiting_pages < 10  # the log restarted from its beginning
    finally:
        checkpoints.stop()
    assert pages_waiting(path.with_name("no-such-store.db-shm")) == 0


def test_its_thread_checkpoints_once_enough_pages_wait(store: tuple[Engine, Path]) -> None:
    """Not on every look: each checkpoint syncs the disk, and a sync can stall every commit."""
    engine, path = store
    checkpoints = WalCheckpointer(engine, interval_s=0.02, threshold_pages=100)
    checkpoints.start()
    try:
        size = path.stat().st_size
        write(engine, 20)
        time.sleep(0.3)  # fifteen looks
        assert 40 < checkpoints.waiting_pages < 100
        assert path.stat().st_size == size  # nothing copied yet
        write(engine, 20)  # past 100: copied, but for what was written after the look

        def copied() -> bool:
            # A checkpoint grows the file before it copies, and counts the pages copied last.
            return path.stat().st_size >= size + 20 * PAGE and checkpoints.waiting_pages < 100

        deadline = time.monotonic() + 10
        while not copied() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert path.stat().st_size >= size + 20 * PAGE
        assert checkpoints.waiting_pages < 100
        assert checkpoints.running
    finally:
        checkpoints.stop()
    assert not checkpoints.running


def test_it_does_nothing_on_postgres(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    checkpoints = WalCheckpointer(engine, interval_s=0.05)
    checkpoints.start()
    assert not checkpoints.applies
    assert not checkpoints.running
    checkpoints.stop()
    engine.dispose()
