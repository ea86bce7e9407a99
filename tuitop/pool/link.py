"""The pool's link to Redis: one client for the server in force, retried with back-off.

While Redis does not answer the pool keeps running what its workers hold, and tries again
after 1, 2, 4 … 30 s, saying so once a try in the log (the password masked). When the
config names another server (or new credentials), the link to the old one is kept aside
while workers still serve it: its due retries go on, and what those workers leave there
is recovered there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import cast

import redis

from tuitop import keys
from tuitop.config import RedisSettings
from tuitop.pool.plan import backoff, same_server
from tuitop.queue import Queue, RetryPolicy
from tuitop.redisconn import connect, describe_error

REDIS_BACKOFF_MAX = 30.0
SUPERVISOR_SOCKET_TIMEOUT = 3.0
"""Short: a stalled Redis must not stall the pool's loop (time limits, signals)."""


class RedisLink:
    """The client of the Redis in force (``client``, ``queue``), and whether it answers."""

    def __init__(self, pool_name: str, retry: RetryPolicy, logger: logging.Logger) -> None:
        self._pool_name = pool_name
        self._retry = retry
        self.logger = logger
        self.settings = RedisSettings()
        self.client: redis.Redis | None = None
        self.queue: Queue | None = None
        self.ok = False
        """It answered last time; False until the pool holds its name there too."""
        self._down_since = 0.0
        self._retry_at = 0.0
        self._backoff = 0.0
        self.left: dict[RedisSettings, Queue] = {}
        """Servers the pool left for another, while some of its old workers finish there."""

    def due(self, settings: RedisSettings) -> bool:
        """Whether to try (again) now to reach ``settings``' server: it is configured,
        not known to answer, and its back-off has passed."""
        if not settings.configured:
            self.ok = False
            return False
        return not self.ok and time.monotonic() >= self._retry_at

    def open(self, settings: RedisSettings) -> redis.Redis:
        """The client of ``settings``' server (made at the first call); raises
        redis.RedisError when it does not answer a PING."""
        if self.client is None:
            self.settings = settings
            self.client = connect(
                settings,
                client_name=f"tuitop:{self._pool_name}:supervisor",
                socket_timeout=SUPERVISOR_SOCKET_TIMEOUT,
            )
            self.queue = Queue(self.client, self._retry)
        self.client.ping()
        return self.client

    def up(self) -> None:
        """It answers, and the pool holds its name there: the loop may use it."""
        if self._down_since:
            self.logger.warning("Redis is back after %.0f s", time.monotonic() - self._down_since)
        self.ok = True
        self._down_since = self._backoff = 0.0

    def failed(self, error: BaseException) -> None:
        """It did not answer: logged (masked), retried after the back-off."""
        self.ok = False
        self._backoff = backoff(self._backoff, REDIS_BACKOFF_MAX)
        self._retry_at = time.monotonic() + self._backoff
        if not self._down_since:
            self._down_since = time.monotonic()
        self.logger.error(
            "%s; retrying in %.0f s", describe_error(error, self.settings), self._backoff
        )
        if self.client is not None:
            self.client.connection_pool.disconnect()

    def hold_off(self, seconds: float) -> None:
        """Not to be used, nor tried again, for ``seconds`` (another pool holds the name)."""
        self.ok = False
        self._retry_at = time.monotonic() + seconds

    def leave(self) -> None:
        """Lets go of the server in force (the config names another): its queue is kept in
        ``left`` while workers still serve it."""
        if self.client is not None and self.queue is not None:
            previous = self.left.pop(self.settings, None)
            if previous is not None and previous is not self.queue:
                previous.redis.close()
            self.left[self.settings] = self.queue
        self.client = self.queue = None
        self.ok = False
        self._retry_at = self._down_since = self._backoff = 0.0

    def queue_for(self, settings: RedisSettings) -> Queue | None:
        """The queue of the server a worker serves: the one in force while it answers,
        else one left behind (None: not reachable now)."""
        if settings == self.settings and self.client is not None:
            return self.queue if self.ok else None
        return self.left.get(settings)

    def tend_left(
        self,
        current: RedisSettings,
        served: Callable[[RedisSettings], bool],
        release_lanes: Callable[[Queue, RedisSettings], None],
    ) -> None:
        """Due retries of the servers left behind go on while ``served`` says workers
        still serve them; one no worker serves any more has its lanes released (unless
        only the credentials changed), is reported and closed."""
        for settings, queue in list(self.left.items()):
            if settings == current:
                del self.left[settings]  # back on it: it is the current one again
                continue
            still = served(settings)
            moved_on = not same_server(settings, current)
            try:
                queue.move_due()
                if not still and moved_on:
                    release_lanes(queue, settings)
                    self._report_left(settings, queue)
            except redis.RedisError as error:
                if not still:
                    self.logger.warning(
                        "Left Redis %s; could not check what it still holds: %s",
                        settings.address,
                        describe_error(error, settings),
                    )
            if not still:
                del self.left[settings]
                queue.redis.close()

    def _report_left(self, settings: RedisSettings, queue: Queue) -> None:
        lanes = keys.names_in(cast(list[bytes], queue.redis.zrange(keys.LANES, 0, -1)))
        pipe = queue.redis.pipeline(transaction=False)
        pipe.zcard(keys.DELAYED)
        for key in (keys.QUEUE, *(keys.lane_list(lane) for lane in lanes)):
            pipe.llen(key)
        delayed, *depths = pipe.execute()
        waiting = sum(depths)
        self.logger.log(
            logging.WARNING if waiting or delayed else logging.INFO,
            "Left Redis %s: it still holds %d queued and %d delayed message(s), which this "
            "pool no longer serves",
            settings.address,
            waiting,
            delayed,
        )
