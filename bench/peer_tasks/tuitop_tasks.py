"""tuitop's producer side: messages in Tuleap's wire format (:func:`tuitop.message.encode`)
LPUSHed to ``app_user_events``, as a Tuleap front end pushes them. Runs in tuitop's own
virtualenv (the only module here that imports tuitop); the handler that runs the job is
:mod:`bench.peers_handler`.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis

from bench.peer_tasks import peer_jobs
from bench.peer_tasks.listpush import lpush_chunked
from tuitop.backends.redis import keys
from tuitop.message import encode

TOPIC = "bench.peers"


def _client() -> redis.Redis:
    return redis.Redis(host=peer_jobs.HOST, port=peer_jobs.port(), db=peer_jobs.broker_db())


def stage(count: int, job: str) -> None:
    def messages() -> Iterator[bytes]:
        for _ in range(count):
            yield encode(TOPIC, {"job": job})

    lpush_chunked(_client(), keys.QUEUE, messages())


_producer: redis.Redis | None = None


def enqueue(job: str, enqueued: float | None) -> None:
    global _producer
    if _producer is None:
        _producer = _client()
    payload: dict[str, object] = {"job": job}
    if enqueued is not None:
        payload["enqueued"] = enqueued
    _producer.lpush(keys.QUEUE, encode(TOPIC, payload, enqueue_ts=enqueued))
