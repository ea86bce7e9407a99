"""What the CLI, the producers and the views read and do in one Redis
(:class:`~tuitop.backends.base.QueueAdmin`, :class:`~tuitop.backends.base.StoreView`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import redis

from tuitop.backends.base import (
    COMMAND_TTL,
    HELD_SHOWN,
    LeftBehind,
)
from tuitop.backends.errors import (
    at_the_edge,
)
from tuitop.backends.redis import keys, tuleapworkers
from tuitop.backends.redis.connection import ERRORS, connect, redis_clock, translate
from tuitop.backends.redis.queue import Queue
from tuitop.backends.redis.snapshot import take_snapshot
from tuitop.backends.redis.stats import read_buckets
from tuitop.config import RedisSettings
from tuitop.message import Message, decode
from tuitop.snapshot import Snapshot
from tuitop.stats import WindowStats, summarize


@at_the_edge(ERRORS, lambda self, error: translate(error, self.settings))
class RedisAdmin(Queue):
    """The queue as the CLI, the producers and the dead-letter screen use it
    (:class:`~tuitop.backends.base.QueueAdmin`)."""

    def __init__(self, settings: RedisSettings, client: redis.Redis) -> None:
        super().__init__(client)
        self.settings = settings

    def dead_letter_count(self) -> int:
        return int(self.redis.llen(keys.DEAD_LETTERS))

    def held(self, worker_id: str) -> list[Message]:
        # The tail was taken first; anyone may fill a list: HELD_SHOWN read, not all.
        raws = self.redis.lrange(keys.processing_list(worker_id), -HELD_SHOWN, -1)
        return [decode(raw) for raw in reversed(cast(list[bytes], raws))]

    def send_command(self, pool: str, body: bytes) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.rpush(keys.control(pool), body)
        pipe.expire(keys.control(pool), COMMAND_TTL)
        pipe.execute()

    def clock(self) -> float:
        return redis_clock(self.redis)

    def withdraw_command(self, pool: str, body: bytes) -> bool:
        try:
            return bool(self.redis.lrem(keys.control(pool), 1, body))  # type: ignore[arg-type]
        except redis.ResponseError as error:
            if "WRONGTYPE" not in str(error):
                raise
            return False  # not a list (the pool's read clears it): no command is there

    def wait_reply(self, command_id: str, timeout: float) -> bytes | None:
        # A client of its own: the admin's socket timeout may be shorter than the wait.
        waiter = connect(self.settings, client_name="tuitop:ctl", socket_timeout=timeout + 5)
        try:
            found = waiter.blpop([keys.control_reply(command_id)], timeout=max(timeout, 0.01))
        finally:
            waiter.close()
        return None if found is None else cast(tuple[bytes, bytes], found)[1]

    dead_letters_at = keys.DEAD_LETTERS

    def tuleap_left(self) -> list[LeftBehind]:
        return [
            LeftBehind(
                found.worker_id,
                found.number,
                found.messages,
                where=keys.processing_list(found.worker_id),
                pid=tuleapworkers.running_pid(found.number),
            )
            for found in tuleapworkers.tuleap_lists(self.redis)
        ]

    def published_config(self) -> Mapping[str, str]:
        fields = cast(dict[bytes, bytes], self.redis.hgetall(keys.CONFIG))
        return {
            k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in fields.items()
        }

    def close(self) -> None:
        self.redis.close()


@at_the_edge(ERRORS, lambda self, error: translate(error, self.settings))
class RedisView:
    """What a view reads from one Redis (:class:`~tuitop.backends.base.StoreView`)."""

    def __init__(self, settings: RedisSettings, client_name: str) -> None:
        self.settings = settings
        self.client = connect(settings, client_name=client_name, socket_timeout=2)

    def snapshot(self, now: float) -> Snapshot:
        return take_snapshot(self.client, now)

    def stats(self, now: float, seconds: int) -> WindowStats:
        return summarize(read_buckets(self.client, now, seconds), seconds)

    def queue(self) -> RedisAdmin:
        return RedisAdmin(self.settings, self.client)

    def close(self) -> None:
        self.client.close()
