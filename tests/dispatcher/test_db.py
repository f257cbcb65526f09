import pytest
import sqlalchemy

from dispatcher.db import SchemaOutOfDate, init_db, make_engine


def test_a_store_made_by_an_older_version_is_refused_with_a_clear_message(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    engine = make_engine(url)
    init_db(engine)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("ALTER TABLE run DROP COLUMN policy"))
    with pytest.raises(SchemaOutOfDate, match=r"run\.policy.*delete var/dispatcher\.db"):
        init_db(engine)
    engine.dispose()


def test_init_is_idempotent(tmp_path: object) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/fresh.db")
    init_db(engine)
    init_db(engine)
    engine.dispose()
