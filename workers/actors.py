"""The dramatiq actors: two per provider, on the provider's own queue ``run.<provider>``:
``run_hop.<provider>`` claims a run and calls the provider, ``poll_hop.<provider>`` polls the
provider's job a run waits on (or cancels it there)."""

from typing import Any

import dramatiq
import redis
import structlog
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.queue import actor_name, poll_actor_name, queue_name
from workers.executor import HopExecutor


class LogContext(Middleware):
    """Every log line written while a message is handled names its run and hop."""

    def before_process_message(self, broker: Any, message: Any) -> None:
        run_id, hop = ([*list(message.args), None, None])[:2]
        structlog.contextvars.bind_contextvars(run_id=run_id, hop=hop, queue=message.queue_name)

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        structlog.contextvars.clear_contextvars()

    after_skip_message = after_process_message


#: A message whose handling hit the store or Redis (a locked SQLite file, a dropped connection)
#: is handled again, with backoff: claims and polls are conditional, so a repeat is harmless.
#: Provider failures never get here: the fallback decision owns those.
INFRA_RETRIES = 8


def retry_infrastructure(retries: int, exception: BaseException) -> bool:
    return retries < INFRA_RETRIES and isinstance(exception, SQLAlchemyError | redis.RedisError)


def declare_actors(broker: RedisBroker, executor: HopExecutor, providers: list[str]) -> None:
    for provider in providers:
        for name, body in ((actor_name, executor.handle), (poll_actor_name, executor.poll)):
            declare = dramatiq.actor(
                broker=broker, actor_name=name(provider), queue_name=queue_name(provider),
                retry_when=retry_infrastructure, min_backoff=200, max_backoff=20_000,
            )  # fmt: skip
            declare(body)
