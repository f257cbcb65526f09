"""The queues: one dramatiq queue per provider, ``run.<provider>``.

A message carries a run id and a hop index, never an input or a secret: the run's state
lives in the store. A run's first message also says when a client waits on the run
(``waited``): its worker then hands the finished run to the waiter with the terminal event.
Workers declare two actors per provider under the names given here, so the dispatcher can
enqueue without importing them:

    run_hop.<provider>   claim the run at the hop and call the provider
    poll_hop.<provider>  poll the provider's job the run waits on (a fal job), or cancel
                         it at the provider once the run was canceled
"""

from collections.abc import Sequence

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware, Retries

from dispatcher.doorbell import DoorbellBroker
from dispatcher.settings import Settings

#: The webhook pool's queue and actor: a message is (delivery id, attempt number).
DELIVERY_QUEUE = "webhooks"
DELIVERY_ACTOR = "webhooks.deliver"


def queue_name(provider: str) -> str:
    return f"run.{provider}"


def actor_name(provider: str) -> str:
    return f"run_hop.{provider}"


def poll_actor_name(provider: str) -> str:
    return f"poll_hop.{provider}"


def make_broker(
    settings: Settings, redis_url: str, middleware: list[Middleware] | None = None
) -> DoorbellBroker:
    """A Redis broker tuned for quick redelivery (a dead worker's messages come back in
    seconds) whose idle consumers wait on a doorbell instead of polling."""
    client = redis.Redis.from_url(redis_url)
    return DoorbellBroker(  # type: ignore[no-untyped-call]
        client=client,
        namespace=settings.redis_namespace,
        heartbeat_timeout=settings.heartbeat_timeout_ms,
        maintenance_chance=settings.maintenance_chance,
        # The queue retries nothing unless an actor asks (workers.actors: store and Redis
        # errors only); provider failures belong to the fallback decision.
        middleware=[Retries(max_retries=0), *(middleware or [])],
    )


def enqueue_hop(
    broker: RedisBroker, run_id: str, hop_index: int, provider: str, delay_s: float = 0.0
) -> None:
    broker.enqueue(_hop(actor_name(provider), run_id, hop_index, provider), delay=_ms(delay_s))


def enqueue_hops(broker: DoorbellBroker, hops: Sequence[tuple[str, int, str, bool]]) -> None:
    """Each ``(run id, hop index, provider, waited)`` at once, all in one Redis round trip."""
    broker.enqueue_many(
        [
            (_hop(actor_name(provider), run_id, hop, provider, waited), None)
            for run_id, hop, provider, waited in hops
        ]
    )


def enqueue_poll(
    broker: RedisBroker, run_id: str, hop_index: int, provider: str, delay_s: float = 0.0
) -> None:
    """Poll the job the run waits on at ``hop_index`` after ``delay_s``."""
    message = _hop(poll_actor_name(provider), run_id, hop_index, provider)
    broker.enqueue(message, delay=_ms(delay_s))


def enqueue_delivery(
    broker: RedisBroker, delivery_id: str, number: int, delay_s: float = 0.0
) -> None:
    """Deliver a webhook (attempt ``number``) after ``delay_s``."""
    message = _message(DELIVERY_QUEUE, DELIVERY_ACTOR, (delivery_id, number))
    broker.enqueue(message, delay=_ms(delay_s))


def _hop(
    actor: str, run_id: str, hop_index: int, provider: str, waited: bool = False
) -> dramatiq.Message[None]:
    kwargs = {"waited": True} if waited else {}
    return _message(queue_name(provider), actor, (run_id, hop_index), kwargs)


def _message(
    queue: str, actor: str, args: tuple[str, int], kwargs: dict[str, bool] | None = None
) -> dramatiq.Message[None]:
    return dramatiq.Message(
        queue_name=queue, actor_name=actor, args=args, kwargs=kwargs or {}, options={}
    )


def _ms(delay_s: float) -> int | None:
    return int(delay_s * 1000) if delay_s > 0 else None
