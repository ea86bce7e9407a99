"""The bare loop's producer side and its keys (the loop itself: :mod:`bench.peers_bare`).

A message is ``{"job": …}`` in JSON, with ``"enqueued"`` when it carries its enqueue time;
the queue is :data:`QUEUE`, LPUSHed, taken from the right.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import redis

from bench.peer_tasks import peer_jobs
from bench.peer_tasks.listpush import lpush_chunked

QUEUE = "bare:queue"
PROCESSING_PREFIX = "bare:processing:"


def processing_list(index: int) -> str:
    """Worker ``index``'s processing list."""
    return f"{PROCESSING_PREFIX}{index}"


def message(job: str, enqueued: float | None = None) -> bytes:
    document: dict[str, object] = {"job": job}
    if enqueued is not None:
        document["enqueued"] = enqueued
    return json.dumps(document).encode()


def _client() -> redis.Redis:
    return redis.Redis(host=peer_jobs.HOST, port=peer_jobs.port(), db=peer_jobs.broker_db())


def stage(count: int, job: str) -> None:
    def messages() -> Iterator[bytes]:
        for _ in range(count):
            yield message(job)

    lpush_chunked(_client(), QUEUE, messages())


_producer: redis.Redis | None = None


def enqueue(job: str, enqueued: float | None) -> None:
    global _producer
    if _producer is None:
        _producer = _client()
    _producer.lpush(QUEUE, message(job, enqueued))
