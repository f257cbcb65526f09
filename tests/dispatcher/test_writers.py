"""The run path's writers take turns on a SQLite file (``dispatcher.writers``)."""

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from dispatcher.db import make_engine
from dispatcher.writers import writing
from tests.support.statements import turn_taken


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    with writing(engine) as connection:
        connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
    yield engine
    engine.dispose()


def test_a_write_transaction_holds_the_turn_until_it_has_committed(
    engine: Engine, tmp_path: Path
) -> None:
    turn_file = str(tmp_path / "store.db-writers")
    with writing(engine) as connection:
        connection.execute(text("INSERT INTO t DEFAULT VALUES"))
        assert turn_taken(turn_file)
    assert not turn_taken(turn_file)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM t")).scalar() == 1


def test_a_second_writer_waits_for_the_first_to_finish(engine: Engine) -> None:
    inside, release = threading.Event(), threading.Event()
    order: list[str] = []

    def first() -> None:
        with writing(engine) as connection:
            connection.execute(text("INSERT INTO t DEFAULT VALUES"))
            inside.set()
            release.wait(10)
            order.append("first done")

    def second() -> None:
        with writing(engine) as connection:
            order.append("second in")
            connection.execute(text("INSERT INTO t DEFAULT VALUES"))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert inside.wait(10)
    threads[1].start()
    threads[1].join(0.3)
    assert threads[1].is_alive() and order == []  # waiting for its turn
    release.set()
    for thread in threads:
        thread.join(10)
    assert order == ["first done", "second in"]


def test_a_writer_that_fails_gives_its_turn_back(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError), writing(engine):
        1 / 0  # noqa: B018
    assert not turn_taken(str(tmp_path / "store.db-writers"))
    with writing(engine) as connection:  # and the next one gets it
        connection.execute(text("INSERT INTO t DEFAULT VALUES"))


def test_without_a_file_there_is_no_turn_to_take() -> None:
    engine = make_engine("sqlite://")
    with writing(engine) as connection:
        assert connection.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()


def test_a_database_in_memory_leaves_no_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for url in ("sqlite://", "sqlite:///:memory:"):
        make_engine(url).dispose()
    assert list(tmp_path.iterdir()) == []


def test_where_the_lock_file_cannot_be_made_writers_write_without_turns(tmp_path: Path) -> None:
    """As in a folder the process may only read (a directory in its place stands for that
    here: no user can open it as a file)."""
    (tmp_path / "store.db-writers").mkdir()
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    with writing(engine) as connection:
        connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
        connection.execute(text("INSERT INTO t DEFAULT VALUES"))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM t")).scalar() == 1
    engine.dispose()
