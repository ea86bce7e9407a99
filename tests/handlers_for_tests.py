"""Handlers the end-to-end tests load into real workers with ``--handlers``."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from tuitop.backends.redis.connection import connect
from tuitop.handlers import HandlerRegistry, Job

RUNS_KEY = "test:runs"


def _count_run(job: Job, payload: Any) -> None:
    client = connect(job.settings.redis)
    try:
        client.rpush(RUNS_KEY, str(payload.get("id", "")) if isinstance(payload, dict) else "")
    finally:
        client.close()


def fail(payload: Any, job: Job) -> None:
    """Always raises (after counting the run)."""
    _count_run(job, payload)
    raise RuntimeError("boom from test.fail")


def sleep(payload: Any, job: Job) -> None:
    """Sleeps ``payload['seconds']`` (after counting the run)."""
    _count_run(job, payload)
    time.sleep(float(payload["seconds"]))


def count(payload: Any, job: Job) -> None:
    """Only counts the run."""
    _count_run(job, payload)


def slow(payload: Any, job: Job) -> None:
    """Records its start and its end around ``payload['seconds']`` of sleep: a job cut off
    in the middle leaves a start without an end."""
    client = connect(job.settings.redis)
    try:
        client.rpush(RUNS_KEY, f"start:{payload['id']}")
        time.sleep(float(payload["seconds"]))
        client.rpush(RUNS_KEY, f"end:{payload['id']}")
    finally:
        client.close()


def stdin(payload: Any, job: Job) -> None:
    """Records what the worker's stdin (fd 0) is."""
    client = connect(job.settings.redis)
    try:
        client.rpush(RUNS_KEY, os.readlink("/proc/self/fd/0"))
    finally:
        client.close()


def ends_when_asked(payload: Any, job: Job) -> None:
    """Runs until the worker gets SIGUSR1 (the pool asking for its stacks at the time
    limit), then ends at once, done (after counting the run)."""
    _count_run(job, payload)
    asked = threading.Event()
    signal.signal(signal.SIGUSR1, lambda signum, frame: asked.set())
    deadline = time.monotonic() + 60
    while not asked.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)


def register(registry: HandlerRegistry) -> None:
    registry.register("test.ends_when_asked", ends_when_asked)
    registry.register("test.stdin", stdin)
    registry.register("test.slow", slow)
    registry.register("test.fail", fail)
    registry.register("test.sleep", sleep)
    registry.register("test.count", count)
