"""What SQL a piece of code runs, whether its writer held the turn, and how SQLite plans it."""

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event


@contextmanager
def statements_run(engine: Engine, prefix: str) -> Iterator[list[tuple[str, Any]]]:
    """The statements ``engine`` runs inside the block that start with ``prefix`` (in any
    case), with their parameters: observed, not replaced."""
    seen: list[tuple[str, Any]] = []

    def keep(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith(prefix.upper()):
            seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", keep)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", keep)


def sqlite_plan(engine: Engine, statement: str, params: Any) -> list[str]:
    """SQLite's query plan of ``statement`` with ``params``: a line per step."""
    with engine.connect() as connection:
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        return [row[3] for row in cursor.execute("EXPLAIN QUERY PLAN " + statement, params)]


@contextmanager
def writes_in_turn(engine: Engine) -> Iterator[list[bool]]:
    """For each ``INSERT``, ``UPDATE`` or ``DELETE`` ``engine`` runs inside the block, whether
    its writer held the turn to write (``dispatcher.writers``) as it ran: probed with a lock of
    this test's own on the turn's file (a SQLite file's engine only)."""
    held: list[bool] = []
    turn_file = f"{engine.url.database}-writers"

    def probe(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            held.append(turn_taken(turn_file))

    event.listen(engine, "before_cursor_execute", probe)
    try:
        yield held
    finally:
        event.remove(engine, "before_cursor_execute", probe)


def turn_taken(turn_file: str) -> bool:
    """Whether a writer holds the turn on ``turn_file`` (in this process or another)."""
    fd = os.open(turn_file, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing lets go of the probe's own lock, if it got it
    return False
