"""Wakes the pool's loop when a command lands in its Redis mailbox.

Without it the loop reads the mailbox every tick: one command a second, the largest item
of an idle pool's traffic. A thread instead blocks on the mailbox with ``BLMOVE mailbox
mailbox RIGHT RIGHT`` — the last element moved onto itself: it takes nothing, it only
returns once the list is not empty — then rings the loop, and waits until the loop has
read the mailbox before it blocks again (a command pushed meanwhile makes the next BLMOVE
return at once: none waits for the next one).

The loop still reads the mailbox at its heartbeat's pace whatever the watch says, and
every tick while the watch is not connected (it reconnects with a back-off, on its own
connection): a watch cut off delays a command by one heartbeat interval at most, never
loses it. The database queue has no such wait; its loop reads every tick.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from tuitop.backends.redis import keys
from tuitop.backends.redis.connection import connect, describe_error
from tuitop.backends.retry import backoff
from tuitop.config import RedisSettings

BLOCK_SECONDS = 30
"""How long one BLMOVE waits: an idle watch costs a command (and redis-py's health-check
PING) per this many seconds."""
BACKOFF_MAX = 30.0


class MailboxWatch(threading.Thread):
    """Watches the mailbox of pool ``name`` on the Redis of ``settings``; ``wake`` ends
    the loop's wait (from this thread)."""

    def __init__(
        self,
        settings: RedisSettings,
        name: str,
        wake: Callable[[], None],
        logger: logging.Logger,
    ) -> None:
        super().__init__(name=f"mailbox-{name}", daemon=True)
        self.settings = settings
        self._mailbox = keys.control(name)
        self._client_name = f"tuitop:pool:{name}:mailbox"
        self._wake = wake
        self._logger = logger
        self._stopped = threading.Event()
        self._read = threading.Event()
        """Set while the loop has read the mailbox since the last ring (or none came)."""
        self._read.set()
        self._rung = threading.Event()
        self._connected = threading.Event()
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()
        """Held while the client is made or dropped (``stop`` closes it from the loop)."""

    @property
    def connected(self) -> bool:
        """Whether it watches now; False: the loop reads the mailbox every tick."""
        return self._connected.is_set()

    @property
    def rung(self) -> bool:
        """A command is waiting (or the mailbox is not a list: the loop deals with it)."""
        return self._rung.is_set()

    def read(self) -> None:
        """For the loop, after it read the mailbox: the watch blocks again."""
        self._rung.clear()
        self._read.set()

    def stop(self) -> None:
        """Ends the thread, cutting its BLMOVE short (its connection closed)."""
        self._stopped.set()
        self._read.set()
        self._drop()
        self.join(timeout=2.0)

    def run(self) -> None:
        delay = 0.0
        while not self._stopped.is_set():
            self._read.wait()
            if self._stopped.is_set():
                break
            try:
                found = self._watch_once()
                delay = 0.0
            except redis.ResponseError as error:
                if "WRONGTYPE" not in str(error):
                    # Refused (a Redis without BLMOVE, an ACL): the loop reads every tick.
                    self._fail(error, BACKOFF_MAX)
                    continue
                found = True  # the loop's read clears a mailbox that is no list
            except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
                delay = backoff(delay, BACKOFF_MAX)
                self._fail(error, delay)
                continue
            if found:
                self._read.clear()
                self._rung.set()
                self._wake()

    def _fail(self, error: BaseException, delay: float) -> None:
        """Not watching: dropped, and tried again in ``delay`` s (unless stopped)."""
        self._connected.clear()
        self._drop()
        if self._stopped.is_set():
            return
        self._logger.debug(
            "Mailbox watch: %s; again in %.0f s", describe_error(error, self.settings), delay
        )
        self._stopped.wait(delay)

    def _watch_once(self) -> bool:
        with self._lock:
            if self._stopped.is_set():
                return False  # stop() dropped the client already: no new one
            if self._client is None:
                self._client = connect(
                    self.settings,
                    client_name=self._client_name,
                    socket_timeout=BLOCK_SECONDS + 10,
                )
            client = self._client
        if not self._connected.is_set():
            client.ping()
            self._connected.set()
        moved = client.blmove(self._mailbox, self._mailbox, BLOCK_SECONDS, "RIGHT", "RIGHT")
        return moved is not None

    def _drop(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
            # A BLMOVE under way in the thread ends with an error now.
            client.connection_pool.disconnect()
