"""What SQL a piece of code runs, and how SQLite plans it."""

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
