"""A handler for the latency benchmark: records each job's exact enqueue → start time."""

from __future__ import annotations

import time
from typing import Any

from tuitop.handlers import HandlerRegistry, Job
from tuitop.redisconn import connect

STARTS_KEY = "bench:starts"
_client: Any = None


def stamp(payload: Any, job: Job) -> None:
    started = time.time()
    global _client
    if _client is None:
        _client = connect(job.settings.redis)
    # The producer put the enqueue time in the payload too (the same as _enqueue_ts).
    _client.rpush(STARTS_KEY, repr(started - float(payload["enqueued"])))


def register(registry: HandlerRegistry) -> None:
    registry.register("bench.stamp", stamp)
