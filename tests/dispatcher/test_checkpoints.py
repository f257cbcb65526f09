"""WAL checkpoints moved off the commits of the API and the worker pools
(``dispatcher.checkpoints``)."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from dispatcher.checkpoints import WalCheckpointer
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


def test_its_thread_checkpoints_every_interval(store: tuple[Engine, Path]) -> None:
    engine, path = store
    checkpoints = WalCheckpointer(engine, interval_s=0.05)
    checkpoints.start()
    try:
        size = path.stat().st_size
        write(engine, 50)
        deadline = time.monotonic() + 10
        while path.stat().st_size < size + 50 * PAGE and time.monotonic() < deadline:
            time.sleep(0.02)
        assert path.stat().st_size >= size + 50 * PAGE
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
