"""A worker's conversation with Redis (:class:`~tuitop.backends.base.WorkerChannel`):
take, wait, ack, give back, fail, beat, over :mod:`.queue`'s moves."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

import redis
from redis.client import Pipeline

from tuitop.backends.base import (
    Batch,
    RetryPolicy,
)
from tuitop.backends.errors import (
    at_the_edge,
)
from tuitop.backends.redis import keys
from tuitop.backends.redis.connection import ERRORS, connect, translate
from tuitop.backends.redis.queue import Queue, Taken, TakePlan
from tuitop.backends.redis.stats import flush_into
from tuitop.beats import WorkerBeat
from tuitop.config import RedisSettings
from tuitop.lanes import LaneSet
from tuitop.message import Message, decode, with_payload
from tuitop.outcome import Outcome
from tuitop.stats import StatsBatch


@at_the_edge(ERRORS, lambda self, error: translate(error, self.settings))
class RedisChannel:
    """A worker's conversation with Redis: one client, the take plan of its lanes."""

    inbox = keys.QUEUE
    beats_when_changed = True
    rebeat_every = float(keys.WORKER_HASH_REFRESH)
    wait_takes = True

    def __init__(
        self,
        settings: RedisSettings,
        *,
        lanes: LaneSet,
        serves: tuple[str, ...],
        retry: RetryPolicy,
        client_name: str,
        socket_timeout: float,
    ) -> None:
        """``socket_timeout`` must exceed the longest :meth:`wait`."""
        self.settings = settings
        self.client = connect(settings, client_name=client_name, socket_timeout=socket_timeout)
        self.queue = Queue(self.client, retry, TakePlan.for_lanes(lanes, serves))
        self._lanes, self._serves, self._retry = lanes, serves, retry

    def companion(self, client_name: str, socket_timeout: float) -> RedisChannel:
        return RedisChannel(
            self.settings,
            lanes=self._lanes,
            serves=self._serves,
            retry=self._retry,
            client_name=client_name,
            socket_timeout=socket_timeout,
        )

    def start(self, worker_id: str) -> None:
        self.client.ping()
        self.client.set(keys.worker_lease(worker_id), 1)

    def ping(self) -> None:
        self.client.ping()

    def take(self, worker_id: str, max_batch: int) -> Batch:
        return _batch(self.queue.take_or_count(worker_id, max_batch))

    def wait(self, worker_id: str, timeout: float) -> Batch:
        waited = self.queue.take_blocking(worker_id, timeout)
        messages = [] if waited.raw is None else [decode(waited.raw)]
        return Batch(messages, keys.QUEUE, routed=waited.routed)

    def ack(self, worker_id: str, messages: Sequence[Message], stats: StatsBatch) -> bool:
        if not messages and not stats.fields:
            return True
        return _all_there(messages, self._acks(worker_id, messages, stats).execute())

    def ack_and_take(
        self, worker_id: str, messages: Sequence[Message], stats: StatsBatch, max_batch: int
    ) -> tuple[bool, Batch]:
        if not messages and not stats.fields:
            return True, self.take(worker_id, max_batch)
        pipe = self._acks(worker_id, messages, stats)
        self.queue.take_into(pipe, worker_id, max_batch)
        *replies, took = pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        all_there = _all_there(messages, replies)
        if isinstance(took, redis.exceptions.NoScriptError):
            # Redis lost its scripts (a restart, SCRIPT FLUSH): the acks went; the take
            # again on its own loads the script.
            return all_there, self.take(worker_id, max_batch)
        if isinstance(took, Exception):
            raise took
        return all_there, _batch(self.queue.taken(took))

    def _acks(self, worker_id: str, messages: Sequence[Message], stats: StatsBatch) -> Pipeline:
        """A pipeline holding the acks of ``messages`` (its first reply), then ``stats``."""
        pipe = self.client.pipeline(transaction=False)
        self.queue.ack_into(pipe, worker_id, [message.raw for message in messages])
        flush_into(stats, pipe, time.time())
        return pipe

    def give_back(self, worker_id: str, messages: Sequence[Message], source: str) -> None:
        self.queue.give_back(worker_id, [message.raw for message in messages], to=source)

    def fail(
        self,
        worker_id: str,
        message: Message,
        reason: str,
        *,
        traceback: str = "",
        retryable: bool = True,
        payload: Any = None,
        outcome: Outcome = Outcome.FAILED,
    ) -> Outcome:
        replacement = None if payload is None else with_payload(message.raw, payload)
        return self.queue.fail(
            worker_id,
            message.raw,
            reason,
            traceback=traceback,
            retryable=retryable,
            replacement=replacement,
            outcome=outcome,
        )

    def beat(self, worker_id: str, beat: WorkerBeat, ttl: float) -> bool:
        key = keys.heartbeat(worker_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, mapping=beat.fields())  # type: ignore[arg-type]
        pipe.expire(key, keys.WORKER_HASH_SECONDS)
        pipe.set(keys.worker_alive(worker_id), 1, ex=max(int(ttl), 1))
        pipe.sadd(keys.WORKERS, worker_id)
        pipe.exists(keys.worker_lease(worker_id))
        *_, leased = pipe.execute()
        return bool(leased)

    def leased(self, worker_id: str) -> bool:
        return bool(self.client.exists(keys.worker_lease(worker_id)))

    def held(self, worker_id: str) -> list[Message]:
        raws = cast(list[bytes], self.client.lrange(keys.processing_list(worker_id), 0, -1))
        return [decode(raw) for raw in reversed(raws)]  # the list's tail was taken first

    def leave(self, worker_id: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.srem(keys.WORKERS, worker_id)
        pipe.delete(
            keys.heartbeat(worker_id), keys.worker_alive(worker_id), keys.worker_lease(worker_id)
        )
        pipe.execute()

    def reset(self) -> None:
        self.client.connection_pool.disconnect()

    def close(self) -> None:
        self.client.close()


def _batch(taken: Taken) -> Batch:
    """A take's reply, its messages decoded."""
    return Batch([decode(raw) for raw in taken.messages], taken.source, taken.held)


def _all_there(messages: Sequence[Message], replies: Sequence[Any]) -> bool:
    """Whether the acks (the first of ``replies``, one 1 or 0 a message) found them all."""
    return not (messages and b"0" in replies[0])
