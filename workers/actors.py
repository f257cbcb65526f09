"""The dramatiq actors: one per provider, each on its own queue ``run.<provider>``."""

from typing import Any

import dramatiq
import structlog
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

from dispatcher.queue import actor_name, queue_name
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


def declare_actors(broker: RedisBroker, executor: HopExecutor, providers: list[str]) -> None:
    for provider in providers:
        declare = dramatiq.actor(
            broker=broker,
            actor_name=actor_name(provider),
            queue_name=queue_name(provider),
            max_retries=0,
        )
        declare(executor.handle)
