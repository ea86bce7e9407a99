"""The pool's doorbell: one look at Tuleap's table for all its idle workers.

Tuleap's front ends insert rows and tell nobody, and a database cannot block a client
until a row arrives. Tuleap's own workers each poll, sleeping a random 0-2 s between two
empty looks (each a transaction with a locking read): the idle cost grows with the workers,
and a message waits a second on average. Here the pool looks, while at least one of its
workers is idle — one index lookup, no lock, no transaction:

    the newest id waiting · how many wait (counted up to 100) · tuitop's bell counter

— and when the answer changed, it writes a byte on the pipe of each idle worker, which
wakes from ``select`` and takes. It looks every 10 ms while the answers change (messages
are coming: they wait no longer than that), twice as long after each look that found
nothing new, up to ``interval`` (0.1 s) when the queue is quiet: a quiet pool sends ten
cheap statements a second, whatever its number of workers. It looks on the pool's own
connection, shared with the pool's loop under the session's lock (a look waits at most
for the loop's statement in flight): a pool holds no connection for its doorbell.

The bell counter is bumped by whoever puts an old id back where workers take (a retry
falling due, a give-back), which the newest id would not show; the count catches a row
inserted behind the newest (a front end whose clock is behind). A busy worker is never
rung: it takes again as its job ends. A worker also looks on its own every few seconds
(its wait's timeout), so nothing waits on a lost ring.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from pymysql.cursors import Cursor

from tuitop.backends.db.connection import ERRORS, Session, describe_error
from tuitop.backends.db.schema import QUEUE_NAME

DEFAULT_INTERVAL = 0.1
FASTEST = 0.01
"""How often it looks while messages are coming."""
RETRY_AFTER_ERROR = 2.0

_LOOK = (
    "SELECT (SELECT id FROM async_events WHERE queue_name = %s ORDER BY id DESC LIMIT 1), "
    "(SELECT COUNT(*) FROM (SELECT 1 FROM async_events WHERE queue_name = %s LIMIT 100) "
    "AS waiting), (SELECT bell FROM tuitop_bell WHERE one = 1)"
)


class Doorbell(threading.Thread):
    """Looks at the queue on the session ``session()`` gives (None: the pool serves no
    database now) while ``any_idle()``, and has ``ring_idle()`` ring the idle workers
    when it changed."""

    def __init__(
        self,
        session: Callable[[], Session | None],
        any_idle: Callable[[], bool],
        ring_idle: Callable[[], None],
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        super().__init__(name="doorbell", daemon=True)
        self._session = session
        self._any_idle = any_idle
        self._ring_idle = ring_idle
        self.logger = logger
        self.interval = interval
        self._stopped = threading.Event()
        self._last: Any = None
        self.looks = 0
        """How many looks it made (the benchmark's idle cost)."""

    def run(self) -> None:
        wait = self.interval
        while not self._stopped.wait(wait):
            if self._any_idle() and self._look_and_ring():
                wait = min(FASTEST, self.interval)
            else:
                wait = min(wait * 2, self.interval)

    def _look_and_ring(self) -> bool:
        """One look; True when it found something new (and rang)."""
        session = self._session()
        if session is None:
            return False
        try:
            now = session.run(self._look)
        except ERRORS as error:
            self.logger.debug("Doorbell: %s", describe_error(error, session.settings))
            self._stopped.wait(RETRY_AFTER_ERROR)
            return False
        if now == self._last:
            return False
        self._last = now
        self._ring_idle()
        return True

    def _look(self, cursor: Cursor) -> Any:
        self.looks += 1
        cursor.execute(_LOOK, (QUEUE_NAME, QUEUE_NAME))
        return cursor.fetchone()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=5)
