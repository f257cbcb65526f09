"""Which failures of a message's handling get the message handled again."""

import redis
from sqlalchemy.exc import OperationalError

from workers.actors import INFRA_RETRIES, retry_infrastructure


def test_store_and_redis_errors_are_retried_a_bounded_number_of_times() -> None:
    locked = OperationalError("UPDATE run ...", {}, Exception("database is locked"))
    assert retry_infrastructure(0, locked)
    assert retry_infrastructure(0, redis.ConnectionError("gone"))
    assert not retry_infrastructure(INFRA_RETRIES, locked)


def test_anything_else_is_not_retried() -> None:
    assert not retry_infrastructure(0, ValueError("a bug"))
