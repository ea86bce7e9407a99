"""The pool's presence in the store: its name, its heartbeat, the config it publishes, its
lanes.

* **The name** (a lease of ``heartbeat_ttl`` renewed every tick): two pools never run under
  one name, so worker ids never meet. A pool that finds its name taken (its lease expired
  while the store was away, and another took it) stops its workers and waits.
* **The heartbeat** (a :class:`~tuitop.beats.PoolBeat` with the same TTL): what every view
  shows, and the list of its workers alive (an idle worker writes nothing of its own);
  written when it changes and three times a TTL otherwise; kept to the end of a warm
  stop, marked ``stopping``.
* **The config**: the async scope in force, versioned, for producers on other hosts (the
  Notifier reads it instead of the files). Last writer wins among pools.
* **The lanes**: those its workers served go back to Tuleap's queue as it stops or leaves a
  store, unless another live pool serves them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time

from tuitop.backends.base import PoolStore
from tuitop.backends.errors import StoreError
from tuitop.beats import PoolBeat
from tuitop.lanes import TULEAP_QUEUE
from tuitop.pool.configuration import Configuration
from tuitop.pool.link import StoreLink

BEAT_EVERY = 0.3
"""Of the heartbeat's TTL: how often it is written when nothing changed (three writes in a
TTL: one lost, or a slow turn of the loop, does not let it expire)."""


class Presence:
    """This pool in the store of ``link``."""

    def __init__(
        self, link: StoreLink, name: str, heartbeat_ttl: float, logger: logging.Logger
    ) -> None:
        self.link = link
        self.name = name
        self.ttl = int(heartbeat_ttl)
        self.logger = logger
        self.token = f"{socket.gethostname()}:{os.getpid()}:{time.time()}"
        self.owns_name = False
        self.name_refused = False
        """Its last claim found the name held by another pool."""
        self.last_beat: PoolBeat | None = None
        """The heartbeat it last wrote (None before the first)."""
        self.published_at = -math.inf
        """When (monotonic) the heartbeat last got through."""
        self._said: tuple[dict[str, str | int | float], frozenset[str]] | None = None
        self.config_published = False
        """The config in force is published (a new load, or another store, sets it False)."""
        self.served_lanes: set[str] = set()
        """Every lane a worker of this pool served since it started (and its workers may
        have moved messages to): released as the pool stops."""

    def _store(self) -> PoolStore:
        store = self.link.store
        assert store is not None
        return store

    # --- the name ------------------------------------------------------------------------

    def claim(self) -> bool:
        """Takes (or renews) the name; False, said in the log, when another pool holds it."""
        store = self._store()
        self.name_refused = False
        if store.claim_name(self.name, self.token, self.ttl):
            self.owns_name = True
            return True
        self.name_refused = True
        if self.owns_name:
            self.logger.error(
                "Pool name %s was taken over by another pool; stopping this pool's workers",
                self.name,
            )
        else:
            self.logger.error(
                "Another pool named %s is running (%s); start this one with another "
                "--pool-name. Trying again in %d s",
                self.name,
                store.name_owner(self.name) or "?",
                self.ttl,
            )
        self.owns_name = False
        return False

    def release(self) -> None:
        """Gives the name up (and the heartbeat), if it is still this pool's."""
        store = self.link.store
        if not (self.owns_name and store is not None):
            return
        with contextlib.suppress(StoreError):  # else it expires on its own
            store.release_name(self.name, self.token)
        self.owns_name = False

    # --- the heartbeat and the config ----------------------------------------------------

    def publish(
        self,
        config: Configuration,
        *,
        running: int,
        served: set[str],
        stopping: bool,
        workers: tuple[str, ...] = (),
    ) -> bool:
        """Writes the heartbeat listing ``workers`` as alive (and, while not ``stopping``,
        the lanes ``served`` and the depth history every view draws), the config when not
        yet published, and renews the name: False when the name was lost. Written when
        something changed or ``BEAT_EVERY`` of the TTL passed; otherwise nothing is sent
        (:attr:`published_at` says when it last was). Raises the store's errors."""
        store = self._store()
        settings = config.settings
        beat = PoolBeat(
            host=socket.gethostname(),
            pid=os.getpid(),
            wanted=config.wanted,
            configured=settings.backend_workers,
            running=running,
            files=tuple(settings.files),
            log_level=str(settings.log_level),
            async_scope=str(settings.async_scope),
            lanes=settings.lanes.describe(),
            served=() if stopping else tuple(sorted(served)),
            redis=settings.store.address,
            loaded_at=config.loaded_at,
            config_error=config.error,
            stopping=stopping,
            paused=config.paused,
            paused_lanes=tuple(sorted(config.paused_lanes)),
            held=config.held,
            workers=tuple(sorted(workers)),
            instance=self.token,
            beat=time.time(),
        )
        said = (beat.fields() | {"beat": 0}, frozenset(served))
        now = time.monotonic()
        if (
            said == self._said
            and self.config_published
            and now - self.published_at < self.ttl * BEAT_EVERY
        ):
            return True
        store.publish(self.name, beat, self.ttl, served, stopping)
        self.last_beat = beat
        self._said, self.published_at = said, now
        if not self.config_published and not stopping:
            store.publish_config(
                {
                    "async_scope": str(settings.async_scope),
                    "log_level": str(settings.log_level),
                    "workers": settings.backend_workers,
                    "pool": self.name,
                    "loaded_at": config.loaded_at,
                    "config_error": config.error,
                }
            )
            self.config_published = True
        return self.claim()

    def forget_published(self) -> None:
        """The next :meth:`publish` writes, whatever it wrote before (a store back, or
        another one)."""
        self._said = None

    # --- the lanes -----------------------------------------------------------------------

    def release_lanes(self, store: PoolStore) -> None:
        """The lanes this pool served that no other live pool on ``store`` serves go back
        to Tuleap's queue there, as the pool stops or leaves that store: nothing waits
        where only a tuitop reads once none runs (a Tuleap worker taking over, Tuleap's
        SYSTEM_CHECK)."""
        if not self.served_lanes:
            return
        where = store.settings
        try:
            moved = store.release_lanes(self.name, self.served_lanes)
        except StoreError as error:
            self.logger.warning(
                "Could not move this pool's lanes back to %s on %s: %s (the next pool to "
                "start there does it)",
                TULEAP_QUEUE,
                where.address,
                str(error),
            )
            return
        for lane, count in moved.items():
            self.logger.warning(
                "No other pool serves lane %s on %s: %d message(s) moved back to %s",
                lane,
                where.address,
                count,
                TULEAP_QUEUE,
            )
