"""The pool's link to the queue's server: one store, retried with back-off.

While the server (Redis, or Tuleap's database) does not answer the pool keeps running what
its workers hold, and tries again after 1, 2, 4 … 30 s, saying so once a try in the log
(the password masked). When the config names another server (or new credentials, or the
other kind of queue), the store left is kept aside while workers still serve it: its due
retries go on, and what those workers leave there is recovered there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tuitop.backends import pool_store
from tuitop.backends.base import PoolStore, RetryPolicy
from tuitop.backends.errors import StoreError, StoreUnavailable
from tuitop.backends.retry import backoff
from tuitop.config import RedisSettings, StoreSettings
from tuitop.pool.plan import same_server

STORE_BACKOFF_MAX = 30.0
REFUSAL_LOG_EVERY = 60.0
SUPERVISOR_SOCKET_TIMEOUT = 3.0
"""Short: a stalled server must not stall the pool's loop (time limits, signals)."""


class StoreLink:
    """The store of the server in force (``store``), and whether it answers."""

    def __init__(self, pool_name: str, retry: RetryPolicy, logger: logging.Logger) -> None:
        self._pool_name = pool_name
        self._retry = retry
        self.logger = logger
        self.settings: StoreSettings = RedisSettings()
        self.store: PoolStore | None = None
        self.ok = False
        """It answered last time; False until the pool holds its name there too."""
        self.up_since = 0.0
        """When it last came up (monotonic)."""
        self.down_for = 0.0
        """How long it was away before (0: it never was): heartbeats that expired then may
        have expired only because the server was away (their workers beat again within
        seconds of its return)."""
        self._refused: dict[str, float] = {}
        self._down_since = 0.0
        self._retry_at = 0.0
        self._backoff = 0.0
        self.left: dict[StoreSettings, PoolStore] = {}
        """Servers the pool left for another, while some of its old workers finish there."""

    def due(self, settings: StoreSettings) -> bool:
        """Whether to try (again) now to reach ``settings``' server: it is configured,
        not known to answer, and its back-off has passed."""
        if not settings.configured:
            self.ok = False
            return False
        return not self.ok and time.monotonic() >= self._retry_at

    def open(self, settings: StoreSettings) -> PoolStore:
        """The store of ``settings``' server (made at the first call); raises one of
        :attr:`errors` when it does not answer."""
        if self.store is None:
            self.settings = settings
            self.store = pool_store(
                settings,
                pool_name=self._pool_name,
                retry=self._retry,
                socket_timeout=SUPERVISOR_SOCKET_TIMEOUT,
            )
        self.store.ping()
        return self.store

    def up(self) -> None:
        """It answers, and the pool holds its name there: the loop may use it."""
        if self._down_since:
            self.logger.warning(
                "%s is back after %.0f s", self._name, time.monotonic() - self._down_since
            )
        self.ok = True
        self.up_since = time.monotonic()
        self.down_for = self.up_since - self._down_since if self._down_since else 0.0
        self._down_since = self._backoff = 0.0

    @property
    def _name(self) -> str:
        return self.settings.noun.capitalize()

    def failed(self, error: StoreError) -> None:
        """It did not answer: logged (masked), retried after the back-off."""
        self.ok = False
        self._backoff = backoff(self._backoff, STORE_BACKOFF_MAX)
        self._retry_at = time.monotonic() + self._backoff
        if not self._down_since:
            self._down_since = time.monotonic()
        self.logger.error("%s; retrying in %.0f s", error, self._backoff)
        if self.store is not None:
            self.store.close()  # a fresh connection at the next try

    def trouble(self, error: StoreError) -> None:
        """An error of the store in force: :meth:`failed` when its server does not answer;
        one statement it refused is logged (once a minute for the same words) and the
        loop goes on, its link up."""
        if self.store is None or isinstance(error, StoreUnavailable):
            self.failed(error)
            return
        said = str(error)
        now = time.monotonic()
        if self._refused.get(said, -REFUSAL_LOG_EVERY) + REFUSAL_LOG_EVERY <= now:
            self._refused[said] = now
            self.logger.error("%s (refused; the pool goes on, and tries again)", said)

    def hold_off(self, seconds: float) -> None:
        """Not to be used, nor tried again, for ``seconds`` (another pool holds the name)."""
        self.ok = False
        self._retry_at = time.monotonic() + seconds

    def leave(self) -> None:
        """Lets go of the server in force (the config names another): its store is kept
        in ``left`` while workers still serve it."""
        if self.store is not None:
            previous = self.left.pop(self.settings, None)
            if previous is not None and previous is not self.store:
                previous.close()
            self.left[self.settings] = self.store
        self.store = None
        self.ok = False
        self._retry_at = self._down_since = self._backoff = 0.0

    def store_for(self, settings: StoreSettings) -> PoolStore | None:
        """The store of the server a worker serves: the one in force while it answers,
        else one left behind (None: not reachable now)."""
        if settings == self.settings and self.store is not None:
            return self.store if self.ok else None
        return self.left.get(settings)

    def tend_left(
        self,
        current: StoreSettings,
        served: Callable[[StoreSettings], bool],
        release_lanes: Callable[[PoolStore], None],
    ) -> None:
        """Due retries of the servers left behind go on while ``served`` says workers
        still serve them; one no worker serves any more has its lanes released (unless
        only the credentials changed), is reported and closed."""
        for settings, store in list(self.left.items()):
            if settings == current:
                del self.left[settings]  # back on it: it is the current one again
                continue
            still = served(settings)
            moved_on = not same_server(settings, current)
            try:
                store.move_due()
                if not still and moved_on:
                    release_lanes(store)
                    self._report_left(store)
            except StoreError as error:
                if not still:
                    self.logger.warning(
                        "Left %s; could not check what it still holds: %s",
                        settings.address,
                        str(error),
                    )
            if not still:
                del self.left[settings]
                store.close()

    def _report_left(self, store: PoolStore) -> None:
        waiting, delayed = store.holds()
        self.logger.log(
            logging.WARNING if waiting or delayed else logging.INFO,
            "Left %s %s: it still holds %d queued and %d delayed message(s), which this "
            "pool no longer serves",
            store.settings.noun,
            store.settings.address,
            waiting,
            delayed,
        )
