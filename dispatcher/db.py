"""The results store's engine: SQLite (WAL) by default, Postgres by URL."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, TypeDecorator, event, inspect, make_url
from sqlmodel import SQLModel, create_engine

from dispatcher.jsontext import dumps, loads
from dispatcher.writers import take_turns


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; for a SQLite file, its folder is created, WAL switched on, and
    the run path's writers take turns (``dispatcher.writers``)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        database = make_url(url).database
        file = Path(database) if database and database != ":memory:" else None
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False}, pool_size=16, **_JSON_COLUMNS
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        if file is not None:
            take_turns(engine, file)
        return engine
    return create_engine(url, pool_size=16, max_overflow=16, pool_pre_ping=True, **_JSON_COLUMNS)


#: The JSON columns (inputs, outputs, chains, usage) written and read by ``jsontext``.
_JSON_COLUMNS: dict[str, Any] = {"json_serializer": dumps, "json_deserializer": loads}


class SchemaOutOfDate(RuntimeError):
    """The store's tables lack columns this version needs."""


def init_db(engine: Engine) -> None:
    """Create the tables that do not exist yet; refuse a store whose tables are older."""
    from dispatcher import models  # noqa: F401  (registers the tables)

    SQLModel.metadata.create_all(engine)
    inspector = inspect(engine)
    missing = [
        f"{table.name}.{column.name}"
        for table in SQLModel.metadata.sorted_tables
        for column in table.columns
        if column.name not in {c["name"] for c in inspector.get_columns(table.name)}
    ]
    if missing:
        raise SchemaOutOfDate(
            f"the store {engine.url!r} was made by an older version and lacks {missing}: "
            "for a development store, delete var/dispatcher.db; otherwise migrate it first"
        )
