"""dramatiq's Redis broker, woken by a doorbell instead of polling an empty queue.

dramatiq's Redis consumer sleeps between fetches of an empty queue, up to its timeout: a
short timeout costs idle CPU in every consumer (about a seventh of a core per pool at
10 ms), a long one adds its length to every run's latency. Here every enqueue also
pushes a token onto ``<queue>.bell`` (in the same round trip), and an idle consumer waits
on that list with BLPOP instead of sleeping: it wakes the moment a message arrives, and
otherwise only when its timeout passes. Messages that arrive without ringing (requeued by
dramatiq's maintenance after a worker died) are picked up by the next timed fetch.

``enqueue_many`` sends any number of messages in one round trip, all or none (one
``MULTI``/``EXEC``): per queue, one ``HSET`` of the messages into ``<queue>.msgs``, one
``RPUSH`` of their ids onto ``<queue>`` (what dramatiq's ``enqueue`` script does for one
message), and one ring. dramatiq's script also registers the producer as a worker with a
heartbeat and, now and then, runs queue maintenance; a producer needs neither (the consumers
register themselves and run maintenance on their fetches), and calling it once per message
costs about 50 us of Python per message in redis-py alone.

Acks go out together: dramatiq's worker threads each ack their message as they finish it, one
round trip of its ack script each. Here the thread that finds no ack being sent sends every ack
gathered, in one pipeline of the same script calls, until none are left; the others leave
theirs to it and go on. An ack that could not be sent is kept for the next send (a repeat does
nothing: the script removes a message only from this worker's acks).

The queue's keys are dramatiq's, unchanged: any dramatiq worker can consume these queues, and
this consumer can consume any dramatiq producer's.
"""

import threading
import time
from collections.abc import Sequence
from typing import Any
from uuid import uuid4

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis, dq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message
from redis.exceptions import NoScriptError

#: How long a consumer whose prefetched messages are all in hand waits before looking again.
FULL_PAUSE_S = 0.001
#: Tokens kept on a bell: enough to wake every consumer of a busy queue, never a backlog.
BELL_DEPTH = 64


class DoorbellBroker(RedisBroker):
    def bell(self, queue_name: str) -> str:
        return f"{self.namespace}:{queue_name}.bell"

    def dispatch_args(self, command: str, queue_name: str, *args: Any) -> list[Any]:
        """The arguments dramatiq's ``dispatch`` script takes for ``command``, as its
        ``do_<command>`` builds them."""
        return [
            command,
            current_millis(),
            queue_name,
            self.broker_id,
            self.heartbeat_timeout,
            self.dead_message_ttl,
            self._should_do_maintenance(command),
            self._max_unpack_size(),  # type: ignore[no-untyped-call]
            *args,
        ]

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _DoorbellConsumer

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """dramatiq's ``enqueue``: the one-message case of ``enqueue_many``."""
        return self.enqueue_many([(message, delay)])[0]

    def enqueue_many(
        self, messages: Sequence[tuple[Message[Any], int | None]]
    ) -> list[Message[Any]]:
        """Enqueue each ``(message, delay ms or None)`` as dramatiq's ``enqueue`` does (a
        Redis id of its own, the delay queue when delayed, the middleware's hooks), all in one
        round trip; each queue's bell rings once."""
        sent = [self._prepare(message, delay) for message, delay in messages]
        self._send(sent)
        for message, (_, delay) in zip(sent, messages, strict=True):
            self.emit_after("enqueue", message, delay)
        return sent

    def _prepare(self, message: Message[Any], delay: int | None) -> Message[Any]:
        message = message.copy(options={"redis_message_id": str(uuid4())})
        if delay is not None:
            message = message.copy(
                queue_name=dq_name(message.queue_name),
                options={"eta": current_millis() + delay},
            )
        self.emit_before("enqueue", message, delay)
        return message

    def _send(self, messages: list[Message[Any]]) -> None:
        by_queue: dict[str, dict[str, bytes]] = {}
        for message in messages:
            queued = by_queue.setdefault(message.queue_name, {})
            queued[message.options["redis_message_id"]] = message.encode()
        pipe = self.client.pipeline(transaction=True)
        for queue_name, queued in by_queue.items():
            key = f"{self.namespace}:{queue_name}"
            pipe.hset(f"{key}.msgs", mapping=queued)  # type: ignore[arg-type]
            pipe.rpush(key, *queued)
            pipe.lpush(self.bell(queue_name), 1)
            pipe.ltrim(self.bell(queue_name), 0, BELL_DEPTH - 1)
        pipe.execute()


class _DoorbellConsumer(_RedisConsumer):
    """dramatiq's consumer, with the idle sleep replaced by a wait on the queue's bell and the
    acks of messages finished together sent together."""

    def __init__(self, broker: DoorbellBroker, queue_name: str, prefetch: int, timeout: int):
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        self._acks: list[MessageProxy] = []
        self._acks_lock = threading.Lock()
        self._sending = False

    def ack(self, message: MessageProxy) -> None:
        """Ack ``message``, with whatever other acks gather while they are sent."""
        with self._acks_lock:
            self._acks.append(message)
            if self._sending:  # the sending thread takes it along
                return
            self._sending = True
        try:
            while batch := self._take_acks():
                self._send_acks(batch)
        except BaseException:
            with self._acks_lock:
                self._sending = False
            raise

    def _take_acks(self) -> list[MessageProxy]:
        """The acks gathered; none left ends this thread's turn to send (in the same lock, so
        an ack added after it is sent by its own thread)."""
        with self._acks_lock:
            batch, self._acks = self._acks, []
            self._sending = bool(batch)
            return batch

    def _send_acks(self, batch: list[MessageProxy]) -> None:
        """dramatiq's ack script for each message, in one round trip; kept for the next send
        if Redis did not take them."""
        broker: DoorbellBroker = self.broker
        pipe = broker.client.pipeline(transaction=False)
        for message in batch:
            args = broker.dispatch_args("ack", self.queue_name, message.options["redis_message_id"])
            pipe.evalsha(broker.scripts["dispatch"].sha, 1, broker.namespace, *args)
        try:
            answers = pipe.execute(raise_on_error=False)
        except redis.ConnectionError as exc:
            with self._acks_lock:
                self._acks[:0] = batch
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
        for message, answer in zip(batch, answers, strict=True):
            if isinstance(answer, NoScriptError):  # the server lost it: dramatiq's own way
                super().ack(message)  # type: ignore[no-untyped-call]
            elif isinstance(answer, Exception):
                raise answer
            self.queued_message_ids.discard(message.message_id)

    def __next__(self) -> MessageProxy | None:
        try:
            while True:
                if self.message_cache:
                    message = Message.decode(self.message_cache.pop(0))
                    self.queued_message_ids.add(message.message_id)
                    return MessageProxy(message)
                room = self.prefetch - self.outstanding_message_count
                if room <= 0:  # every prefetched message is still being handled
                    time.sleep(FULL_PAUSE_S)
                    return None
                self.message_cache = self.broker.do_fetch(self.queue_name, room)
                if not self.message_cache:
                    self._wait_for_bell()
                    return None
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]

    def _wait_for_bell(self) -> None:
        broker: DoorbellBroker = self.broker
        broker.client.blpop([broker.bell(self.queue_name)], timeout=self.timeout / 1000)
