"""The doorbell: an enqueue rings its queue's bell, and an idle consumer wakes on the ring."""

import threading
import time
import uuid

import dramatiq
import pytest
import redis

from dispatcher.doorbell import BELL_DEPTH, DoorbellBroker
from dispatcher.queue import enqueue_hop, enqueue_hops, make_broker, queue_name
from dispatcher.settings import Settings


def _broker(settings: Settings) -> DoorbellBroker:
    broker = make_broker(
        settings.model_copy(update={"redis_namespace": f"bell{uuid.uuid4().hex[:6]}"}),
        str(settings.redis_url),
    )
    assert isinstance(broker, DoorbellBroker)
    return broker


def test_an_enqueue_rings_the_bell_and_the_bell_stays_short(settings: Settings) -> None:
    broker = _broker(settings)
    for n in range(BELL_DEPTH + 10):
        enqueue_hop(broker, f"run_{n}", 0, "simulated")
    assert broker.client.llen(broker.bell(queue_name("simulated"))) == BELL_DEPTH
    assert broker.client.llen(f"{broker.namespace}:{queue_name('simulated')}") == BELL_DEPTH + 10


def test_an_idle_consumer_wakes_on_the_ring_not_its_timeout(settings: Settings) -> None:
    broker = _broker(settings)
    consumer = broker.consume(queue_name("simulated"), prefetch=4, timeout=30_000)
    threading.Timer(0.2, enqueue_hop, (broker, "run_late", 0, "simulated")).start()
    started = time.monotonic()
    assert next(consumer) is None  # woken by the ring, with the message not yet fetched
    woke_after = time.monotonic() - started
    message = next(consumer)
    assert message is not None and message.args == ("run_late", 0)
    assert woke_after < 15  # far below the 30 s timeout: the bell, not the clock, woke it
    consumer.ack(message)


def test_a_delayed_message_rings_the_delay_queue(settings: Settings) -> None:
    broker = _broker(settings)
    enqueue_hop(broker, "run_d", 0, "simulated", delay_s=5)
    assert broker.client.llen(broker.bell(dramatiq.common.dq_name(queue_name("simulated")))) == 1


def test_an_enqueue_survives_a_server_that_lost_its_scripts(settings: Settings) -> None:
    broker = _broker(settings)
    broker.client.script_flush()
    enqueue_hop(broker, "run_after_flush", 0, "simulated")
    assert broker.client.llen(f"{broker.namespace}:{queue_name('simulated')}") == 1


def test_many_messages_go_out_together_each_queue_ringing_once(settings: Settings) -> None:
    broker = _broker(settings)
    hops = [(f"run_{n}", 0, "simulated", n == 0) for n in range(5)]
    hops += [("run_o", 1, "openai", False)]
    enqueue_hops(broker, hops)
    for provider, count in (("simulated", 5), ("openai", 1)):
        assert broker.client.llen(broker.bell(queue_name(provider))) == 1
        assert broker.client.llen(f"{broker.namespace}:{queue_name(provider)}") == count
    consumer = broker.consume(queue_name("simulated"), prefetch=10, timeout=1000)
    received = [next(consumer) for _ in range(5)]  # dramatiq's own fetch reads them
    assert [message.args for message in received if message] == [
        (run_id, 0) for run_id, _, _, _ in hops[:5]
    ]
    # a run a client waits on says so; the others carry nothing more
    assert [m.kwargs for m in received if m] == [{"waited": True}, {}, {}, {}, {}]
    for message in received:
        assert message is not None
        consumer.ack(message)


def _left(broker: DoorbellBroker) -> tuple[int, int]:
    """(messages still stored, ids in any ack set) of the simulated queue."""
    key = f"{broker.namespace}:{queue_name('simulated')}"
    acks = broker.client.keys(f"{broker.namespace}:__acks__.*")
    return broker.client.hlen(f"{key}.msgs"), sum(broker.client.scard(k) for k in acks)


def test_acks_from_many_threads_at_once_all_land(settings: Settings) -> None:
    """Threads that finish together leave their acks to the one sending: every message is
    acked, none is left in the queue's store or in the worker's ack set."""
    broker = _broker(settings)
    enqueue_hops(broker, [(f"run_{n}", 0, "simulated", False) for n in range(60)])
    consumer = broker.consume(queue_name("simulated"), prefetch=60, timeout=1000)
    messages = [message for message in (next(consumer) for _ in range(61)) if message]
    assert len(messages) == 60 and _left(broker) == (60, 60)
    start = threading.Barrier(12)

    def ack_five(chunk: list[dramatiq.broker.MessageProxy]) -> None:
        start.wait()
        for message in chunk:
            consumer.ack(message)

    threads = [threading.Thread(target=ack_five, args=(messages[n::12],)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _left(broker) == (0, 0)
    assert consumer.outstanding_message_count == 0


def test_an_ack_redis_did_not_take_is_sent_with_the_next(settings: Settings) -> None:
    broker = _broker(settings)
    enqueue_hops(broker, [("run_a", 0, "simulated", False), ("run_b", 0, "simulated", False)])
    consumer = broker.consume(queue_name("simulated"), prefetch=2, timeout=1000)
    first, second = (message for message in (next(consumer) for _ in range(3)) if message)
    real = broker.client.pipeline

    def refusing(**options: object) -> object:
        pipe = real(**options)  # type: ignore[arg-type]
        pipe.execute = lambda **_: (_ for _ in ()).throw(redis.ConnectionError("gone"))
        return pipe

    broker.client.pipeline = refusing  # type: ignore[method-assign]
    with pytest.raises(dramatiq.errors.ConnectionClosed):
        consumer.ack(first)
    broker.client.pipeline = real  # type: ignore[method-assign]
    consumer.ack(second)
    assert _left(broker) == (0, 0)


def test_an_ack_survives_a_server_that_lost_its_scripts(settings: Settings) -> None:
    broker = _broker(settings)
    enqueue_hop(broker, "run_s", 0, "simulated")
    consumer = broker.consume(queue_name("simulated"), prefetch=1, timeout=1000)
    message = next(message for message in (next(consumer) for _ in range(2)) if message)
    broker.client.script_flush()
    consumer.ack(message)
    assert _left(broker) == (0, 0)
