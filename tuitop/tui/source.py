"""Where the UI's pictures come from: the queue the config files name (a Redis, or
Tuleap's database), now.

The source follows the config files (a cheap identity check of each file per refresh, a
reload only when one changed), so a view keeps up when an admin moves the pool to another
server; a file that does not load leaves the last good settings in force, as it does for
the pool. Each :meth:`SnapshotSource.take` is one snapshot or the reason there is none: no
queue configured, or its server not answering (said with the password masked; the next
take tries again).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tuitop.backends import open_view
from tuitop.backends.base import QueueAdmin, StoreView
from tuitop.backends.errors import StoreError
from tuitop.config import ConfigError, Settings, StoreSettings
from tuitop.procmeter import ProcessMeter
from tuitop.snapshot import Snapshot
from tuitop.watch import Fingerprint, fingerprint

T = TypeVar("T")
NOT_CONFIGURED = "Redis is not configured ($redis_server is empty), nor is a database"


@dataclass(frozen=True)
class Reading:
    """One refresh: a snapshot, or the error that says why there is none."""

    snapshot: Snapshot | None
    redis_address: str
    """Where it was read (the store's address: a Redis, or the database)."""
    error: str = ""


class SnapshotSource:
    """Takes snapshots of the queue the config names; safe from several threads (one
    conversation with its server at a time)."""

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
        self._view: StoreView | None = None
        self._view_for: tuple[StoreSettings, object] | None = None
        self._lock = threading.Lock()

    @property
    def redis_settings(self) -> StoreSettings:
        """The settings of the store in force (a Redis, or the database)."""
        return self.settings.store

    def _follow_files(self) -> None:
        now = fingerprint(self._files)
        if now == self._fingerprint:
            return
        self._fingerprint = now
        # A file that does not load: the pool says it in its config_error, and the last
        # good settings stay in force here as there.
        with contextlib.suppress(ConfigError):
            self.settings = self._load()

    def view(self) -> StoreView:
        """What reads the store in force (raises its errors, or ValueError when none is
        configured)."""
        self._follow_files()
        wanted = self.settings.store
        key = (wanted, self.settings.lanes)
        if not wanted.configured:
            self.close()
            raise ValueError(NOT_CONFIGURED)
        if self._view is None or self._view_for != key:
            self.close()
            self._view = open_view(wanted, self.settings.lanes, self._client_name)
            self._view_for = key
        return self._view

    def take(self) -> Reading:
        with self._lock:
            return self._take()

    def _take(self) -> Reading:
        address = self.settings.store.address
        try:
            view = self.view()
            address = self.settings.store.address
            snapshot = view.snapshot(self.clock())
        except ValueError as error:
            return Reading(None, "", str(error))
        except StoreError as error:
            self.close()
            return Reading(None, address, str(error))
        if self.meter is not None:
            snapshot = self.meter.measure(snapshot)
        return Reading(snapshot, address)

    def with_queue(self, action: Callable[[QueueAdmin], T]) -> T:
        """Runs ``action`` on the queue of the store in force (the dead-letter screen's
        reads and writes); raises the store's errors, or ValueError when none is
        configured."""
        with self._lock:
            view = self.view()
            try:
                return action(view.queue())
            except StoreError:
                self.close()
                raise

    def close(self) -> None:
        if self._view is not None:
            self._view.close()
        self._view = None
        self._view_for = None
