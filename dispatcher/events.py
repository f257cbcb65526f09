"""Run events: one Redis stream for every run's events, one per run, and a pub/sub channel.

    {ns}:events             every event of every run (capped), for other systems to consume
    {ns}:events:<run id>    one run's events, kept a day: live readers replay, then block
    {ns}:run:<run id>       pub/sub channel carrying the same payload, for waiters

Types: queued, running, attempt_failed, fell_back, waiting, succeeded, failed, canceled.
A payload carries ids, statuses and error classes, never inputs, outputs or secrets.
"""

import json
import time
from typing import Any, Literal

import redis

EventType = Literal[
    "queued", "running", "attempt_failed", "fell_back", "waiting", "succeeded", "failed", "canceled"
]
TERMINAL_EVENTS: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})

STREAM_MAXLEN = 100_000
RUN_STREAM_TTL_S = 86_400


class RunEvents:
    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def stream(self) -> str:
        return f"{self.namespace}:events"

    def run_stream(self, run_id: str) -> str:
        return f"{self.namespace}:events:{run_id}"

    def channel(self, run_id: str) -> str:
        return f"{self.namespace}:run:{run_id}"

    def publish(self, run_id: str, tenant_id: str, type: EventType, **data: Any) -> None:
        payload = json.dumps(
            {"run_id": run_id, "tenant_id": tenant_id, "type": type, "at": time.time(), **data}
        )
        fields = {"event": payload}
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(self.stream(), fields, maxlen=STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
        pipe.xadd(self.run_stream(run_id), fields)  # type: ignore[arg-type]
        pipe.expire(self.run_stream(run_id), RUN_STREAM_TTL_S)
        pipe.publish(self.channel(run_id), payload)
        pipe.execute()
