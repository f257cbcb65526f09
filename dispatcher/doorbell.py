"""dramatiq's Redis broker, woken by a doorbell instead of polling an empty queue.

dramatiq's Redis consumer sleeps between fetches of an empty queue, up to its timeout: a
short timeout costs idle CPU in every consumer (about a seventh of a core per pool at
10 ms), a long one adds its length to every run's latency. Here every enqueue also
pushes a token onto ``<queue>.bell`` (in the same round trip), and an idle consumer waits
on that list with BLPOP instead of sleeping: it wakes the moment a message arrives, and
otherwise only when its timeout passes. Messages that arrive without ringing (requeued by
dramatiq's maintenance after a worker died) are picked up by the next timed fetch.

The queue's own keys and Lua script are dramatiq's, unchanged: any dramatiq worker can
consume these queues, and this consumer can consume any dramatiq producer's.
"""

import time
from typing import Any

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

#: How long a consumer whose prefetched messages are all in hand waits before looking again.
FULL_PAUSE_S = 0.001
#: Tokens kept on a bell: enough to wake every consumer of a busy queue, never a backlog.
BELL_DEPTH = 64


class DoorbellBroker(RedisBroker):
    def bell(self, queue_name: str) -> str:
        return f"{self.namespace}:{queue_name}.bell"

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _DoorbellConsumer

    def do_enqueue(self, queue_name: str, message_id: str, encoded: bytes) -> Any:
        """dramatiq's ``enqueue`` script and the ring, pipelined: one round trip.

        The script goes by ``EVALSHA`` itself: a redis-py ``Script`` in a pipeline would add a
        ``SCRIPT EXISTS`` round trip to every call. A server that lost its scripts (restarted)
        gets the script loaded once and the pipeline sent again.
        """
        args = [
            "enqueue",
            current_millis(),
            queue_name,
            self.broker_id,
            self.heartbeat_timeout,
            self.dead_message_ttl,
            self._should_do_maintenance("enqueue"),
            self._max_unpack_size(),  # type: ignore[no-untyped-call]
            message_id,
            encoded,
        ]
        script = self.scripts["dispatch"]
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            pipe.evalsha(script.sha, 1, self.namespace, *args)
            pipe.lpush(self.bell(queue_name), 1)
            pipe.ltrim(self.bell(queue_name), 0, BELL_DEPTH - 1)
            try:
                return pipe.execute()[0]
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                self.client.script_load(script.script)
        return None


class _DoorbellConsumer(_RedisConsumer):
    """dramatiq's consumer, with the idle sleep replaced by a wait on the queue's bell."""

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
