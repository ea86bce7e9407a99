"""The store-wide series of ``/metrics``: what waits in each lane, how old the next one
is, the dead letters and the retries waiting — the same figures for every pool of a store.

Read from the views' own snapshot (:meth:`~tuitop.backends.base.StoreView.snapshot`, at a
cost that does not grow with the queue), in the scrape's thread, never on the pool's loop —
on the database over the pool's own connection, shared under its lock (the forge's
``max_connections`` counts each), on Redis over a connection of its own — and kept for a
second: several scrapers, or several pools scraped at once, cost one read each a second
at most.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from tuitop.backends import open_view
from tuitop.backends.errors import StoreError
from tuitop.config import Settings, StoreSettings
from tuitop.lanes import LaneSet
from tuitop.snapshot import Snapshot

if TYPE_CHECKING:
    from tuitop.backends.base import PoolStore, StoreView

SNAPSHOT_KEPT = 1.0
"""Seconds a snapshot of the store serves scrapes."""


class StoreReader:
    """Snapshots of the store in force, for the store-wide series, one read a second at
    most."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        pool_name: str,
        pool_store: Callable[[], PoolStore | None] = lambda: None,
    ) -> None:
        """``pool_store``: the pool's store now, whose database connection it shares."""
        self._settings = settings
        self._pool_store = pool_store
        self._client_name = f"tuitop:{pool_name}:metrics"
        self._lock = threading.Lock()
        self._view: StoreView | None = None
        self._opened_for: tuple[StoreSettings, LaneSet, PoolStore | None] | None = None
        self._snapshot: Snapshot | None = None
        self._read_at = 0.0

    def read(self) -> Snapshot | None:
        """The store's snapshot, or None while no store is configured or it does not
        answer (the series are then left out: unknown, not zero)."""
        with self._lock:
            settings = self._settings()
            beside = self._pool_store()
            wanted = (settings.store, settings.lanes, beside)
            if self._opened_for != wanted:
                self._close()
                self._snapshot = None
                if not settings.store.configured:
                    return None
                self._view = open_view(
                    settings.store, settings.lanes, self._client_name, beside=beside
                )
                self._opened_for = wanted
            now = time.monotonic()
            if self._snapshot is not None and now - self._read_at < SNAPSHOT_KEPT:
                return self._snapshot
            assert self._view is not None
            try:
                self._snapshot = self._view.snapshot(time.time())
            except StoreError:
                self._close()  # a fresh connection next time
                return None
            self._read_at = now
            return self._snapshot

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._view is not None:
            with contextlib.suppress(Exception):
                self._view.close()
        self._view, self._opened_for = None, None


def store_series(snapshot: Snapshot) -> Iterable[Metric]:
    """The store-wide series: the same from every pool of the store."""
    depth = GaugeMetricFamily(
        "tuitop_queue_depth",
        "Messages waiting, per lane (store-wide: the same from every pool)",
        labels=["lane"],
    )
    oldest = GaugeMetricFamily(
        "tuitop_queue_oldest_age_seconds",
        "Age of the message each lane gives next (store-wide; absent for an empty lane)",
        labels=["lane"],
    )
    for lane in snapshot.lanes:
        depth.add_metric([lane.name], lane.waiting)
        if lane.oldest_age is not None:
            oldest.add_metric([lane.name], max(lane.oldest_age, 0.0))
    yield depth
    yield oldest
    yield GaugeMetricFamily(
        "tuitop_dead_letters",
        "Dead letters kept (store-wide)",
        value=snapshot.queue.dead_letters,
    )
    yield GaugeMetricFamily(
        "tuitop_retries_waiting",
        "Messages waiting for their retry time (store-wide)",
        value=snapshot.queue.delayed,
    )
