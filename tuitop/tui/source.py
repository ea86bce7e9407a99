"""Where the UI's pictures come from: the Redis the config files name, now.

The source follows the config files (a cheap identity check of each file per refresh, a
reload only when one changed), so a view keeps up when an admin moves the pool to another
Redis; a file that does not load leaves the last good settings in force, as it does for the
pool. Each :meth:`SnapshotSource.take` is one snapshot (two round trips) or the reason there
is none: Redis not configured, or not answering (said with the password masked; the next
take tries again).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import redis

from tuitop.config import ConfigError, RedisSettings, Settings
from tuitop.procmeter import ProcessMeter
from tuitop.queue import Queue
from tuitop.redisconn import connect, describe_error
from tuitop.snapshot import Snapshot, take_snapshot
from tuitop.watch import Fingerprint, fingerprint

T = TypeVar("T")
NOT_CONFIGURED = "Redis is not configured ($redis_server is empty)"


@dataclass(frozen=True)
class Reading:
    """One refresh: a snapshot, or the error that says why there is none."""

    snapshot: Snapshot | None
    redis_address: str
    error: str = ""


class SnapshotSource:
    """Takes snapshots of the Redis the config names; safe from several threads (one
    Redis conversation at a time)."""

    def __init__(
        self,
        load: Callable[[], Settings],
        files: Sequence[str] = (),
        *,
        clock: Callable[[], float] = time.time,
        meter: ProcessMeter | None = None,
        client_name: str = "tuitop:ui",
    ) -> None:
        """``load`` reads the config files (raising ConfigError); ``files`` are the ones to
        follow. ``clock`` is the time of each snapshot (tests freeze it)."""
        self._load = load
        self._files = tuple(files)
        self._fingerprint: Fingerprint = fingerprint(self._files)
        self.settings = load()
        self.clock = clock
        self.meter = meter
        self._client_name = client_name
        self._client: redis.Redis | None = None
        self._client_for: RedisSettings | None = None
        self._lock = threading.Lock()

    @property
    def redis_settings(self) -> RedisSettings:
        return self.settings.redis

    def _follow_files(self) -> None:
        now = fingerprint(self._files)
        if now == self._fingerprint:
            return
        self._fingerprint = now
        # A file that does not load: the pool says it in its config_error, and the last
        # good settings stay in force here as there.
        with contextlib.suppress(ConfigError):
            self.settings = self._load()

    def client(self) -> redis.Redis:
        """A client of the Redis in force (raises redis.RedisError, ValueError when none)."""
        self._follow_files()
        wanted = self.settings.redis
        if not wanted.configured:
            self.close()
            raise ValueError(NOT_CONFIGURED)
        if self._client is None or self._client_for != wanted:
            self.close()
            self._client = connect(wanted, client_name=self._client_name, socket_timeout=2)
            self._client_for = wanted
        return self._client

    def take(self) -> Reading:
        with self._lock:
            return self._take()

    def _take(self) -> Reading:
        address = self.settings.redis.address
        try:
            client = self.client()
            address = self.settings.redis.address
            snapshot = take_snapshot(client, self.clock())
        except ValueError as error:
            return Reading(None, "", str(error))
        except redis.RedisError as error:
            self.close()
            return Reading(None, address, self.describe(error))
        if self.meter is not None:
            snapshot = self.meter.measure(snapshot)
        return Reading(snapshot, address)

    def with_queue(self, action: Callable[[Queue], T]) -> T:
        """Runs ``action`` on the queue of the Redis in force (the dead-letter screen's
        reads and writes); raises redis.RedisError, or ValueError when none is configured."""
        with self._lock:
            try:
                return action(Queue(self.client()))
            except redis.RedisError:
                self.close()
                raise

    def describe(self, error: BaseException) -> str:
        """A Redis error as the UI says it (the password masked)."""
        return describe_error(error, self.settings.redis)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None
        self._client_for = None
