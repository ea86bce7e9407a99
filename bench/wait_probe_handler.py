"""The handler of ``python -m bench.wait_profile`` (``--handlers bench.wait_probe_handler``).

Imported in each worker process, it puts a stopwatch around the worker's blocking take
(:meth:`tuitop.backends.redis.channel.RedisChannel.wait`: profiling, the take itself unchanged),
and its handler for the topic ``bench.wait`` appends one line a message to the file
``BENCH_WAIT_PROBE`` names: ``<enqueued> <wait called> <wait returned> <handler start>
<pid>`` (seconds since the epoch; the two wait times 0 for a message taken in a batch).
"""

from __future__ import annotations

import os
import time
from typing import Any

from tuitop.backends.base import Batch
from tuitop.backends.redis import channel as redis_backend
from tuitop.handlers import HandlerRegistry, Job

TOPIC = "bench.wait"
PROBE_ENV = "BENCH_WAIT_PROBE"

_wait = redis_backend.RedisChannel.wait
_last = {"called": 0.0, "returned": 0.0}
_file: int | None = None


def _timed_wait(self: redis_backend.RedisChannel, worker_id: str, timeout: float) -> Batch:
    called = time.time()
    batch = _wait(self, worker_id, timeout)
    _last["called"], _last["returned"] = called, time.time()
    return batch


redis_backend.RedisChannel.wait = _timed_wait  # type: ignore[method-assign]


def run(payload: Any, job: Job) -> None:
    started = time.time()
    global _file
    if _file is None:
        _file = os.open(os.environ[PROBE_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    line = f"{payload['enqueued']!r} {_last['called']!r} {_last['returned']!r} {started!r}"
    os.write(_file, f"{line} {os.getpid()}\n".encode())
    _last["called"] = _last["returned"] = 0.0  # the next one came in a batch unless set


def register(registry: HandlerRegistry) -> None:
    registry.register(TOPIC, run)
