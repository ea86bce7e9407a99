"""A handler for the latency benchmarks: records each job's exact enqueue → start time,
in Redis (``bench:starts``), or, when ``BENCH_STAMP_FILE`` names a file, one line there
(the database queue's benchmark: no Redis then)."""

from __future__ import annotations

import os
import time
from typing import Any

from tuitop.backends.redis.connection import connect
from tuitop.handlers import HandlerRegistry, Job

STARTS_KEY = "bench:starts"
STAMP_FILE = "BENCH_STAMP_FILE"
_client: Any = None


def record_wait(path: str, wait: float) -> None:
    """Appends one wait (seconds) to ``path``: one write of one line, whole under
    O_APPEND whatever other process appends at once."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, f"{wait!r}\n".encode())
    finally:
        os.close(descriptor)


def stamp(payload: Any, job: Job) -> None:
    started = time.time()
    # The producer put the enqueue time in the payload too (the same as _enqueue_ts).
    wait = started - float(payload["enqueued"])
    path = os.environ.get(STAMP_FILE)
    if path:
        record_wait(path, wait)
        return
    global _client
    if _client is None:
        _client = connect(job.settings.redis)
    _client.rpush(STARTS_KEY, repr(wait))


def register(registry: HandlerRegistry) -> None:
    registry.register("bench.stamp", stamp)
