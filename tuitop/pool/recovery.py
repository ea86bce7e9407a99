"""Recovery: what a gone worker held goes back to the queue (or to the dead letters).

A worker's processing list is recovered — each message retried with one try more, or
dead-lettered past the tries — when:

* it exits, whatever way (at once, by the pool that ran it);
* its heartbeat expired, on any host (looked for every 5 s by every pool: a host that died
  whole is recovered by the others, with a check in the same transaction that it did not
  beat again meanwhile; not in the first heartbeat's life after the pool reached the
  store, when every heartbeat may have expired only because the store was away);
* it is one of Tuleap's own workers' lists, unchanged for ``tuleap_hold_limit`` while no
  Tuleap worker of that number runs here (:mod:`tuitop.backends.redis.tuleapworkers`).

The same scan moves back the lanes no pool serves any more and forgets pools long gone.
What each step does in Redis or in the database is the store's (:mod:`tuitop.backends`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tuitop.backends.base import PoolStore, TimedOut
from tuitop.backends.errors import StoreError
from tuitop.lanes import TULEAP_QUEUE
from tuitop.metrics import Counting
from tuitop.pool.link import StoreLink

ORPHAN_SCAN_EVERY = 5.0
FORGET_EVERY = 60.0
SILENCE_MARGIN = 2.0
"""Beyond how long the server was away: the time a live worker takes to beat again."""


class Recovery:
    """Recovers, on ``link``'s store, what workers that are gone held."""

    def __init__(
        self,
        link: StoreLink,
        *,
        heartbeat_ttl: float,
        tuleap_hold_limit: float,
        logger: logging.Logger,
        counts: Counting | None = None,
    ) -> None:
        """``counts``: where what is recovered is counted, for the pool's metrics."""
        self.link = link
        self.counts = counts or Counting()
        self.heartbeat_ttl = heartbeat_ttl
        self.tuleap_hold_limit = tuleap_hold_limit
        self.logger = logger
        self._last_scan = 0.0
        self._last_tuleap_scan = 0.0
        self._last_forget = -FORGET_EVERY
        self.requeued = 0
        """Messages it sent to their retry (the pool reads when the next one is due)."""

    def recover(
        self,
        worker_id: str,
        reason: str,
        *,
        timed_out: TimedOut | None = None,
        traceback: str = "",
        silent: bool = False,
    ) -> None:
        """Gives back what ``worker_id`` held; left for the next scan while the store is
        down (the worker stays registered until then). ``silent``: only if it does not
        beat."""
        link, store = self.link, self.link.store
        if not link.ok or store is None:
            return
        try:
            recovery = store.recover(
                worker_id,
                reason,
                unless_beating=silent,
                traceback=traceback,
                timed_out=timed_out,
            )
        except StoreError as error:
            link.trouble(error)
            return
        except Exception:
            # Recovery must never take the pool down; the messages stay where they are.
            self.logger.exception("Could not recover the messages of worker %s", worker_id)
            return
        self.counts.recovered(recovery.outcomes, timed_out is not None)
        self.requeued += recovery.requeued
        if recovery.total:
            self.logger.warning(
                "Recovered %d message(s) of worker %s: %d will be retried, %d dead-lettered",
                recovery.total,
                worker_id,
                recovery.requeued,
                recovery.dead_lettered,
            )

    def recover_left_behind(self, store: PoolStore, worker_id: str, reason: str) -> None:
        """A worker of a store the pool left: what it held is recovered there, and said so."""
        where = store.settings.address
        try:
            recovery = store.recover(worker_id, reason)
        except StoreError as error:
            self.logger.error(
                "Could not recover worker %s's messages on the store left behind (%s): %s",
                worker_id,
                where,
                str(error),
            )
            return
        self.counts.recovered(recovery.outcomes, timed_out=False)
        if recovery.total:
            self.logger.warning(
                "Recovered %d message(s) of worker %s on %s left behind (%s)",
                recovery.total,
                worker_id,
                store.settings.noun,
                where,
            )

    def scan(self, ours: set[str], *, force: bool = False) -> None:
        """Every ``ORPHAN_SCAN_EVERY`` s (or now, with ``force``): what registered workers
        not in ``ours`` held once their heartbeat expired, what Tuleap's workers left
        behind, the lanes no pool serves, the pools long gone. Raises the store's errors."""
        now = time.monotonic()
        if not force and now - self._last_scan < ORPHAN_SCAN_EVERY:
            return
        self._last_scan = now
        store = self.link.store
        assert store is not None
        # Each part on its own: one that fails (a bug, a record written by something else)
        # must not keep the others from running. The store's errors go up (it is away).
        parts: list[Callable[[], None]] = [
            lambda: self._move_unserved_lanes_back(store),
            lambda: self._forget_gone_pools(store, now, force),
            lambda: self._recover_tuleaps_lists(store),
            lambda: self._recover_silent_workers(store, ours),
        ]
        for part in parts:
            try:
                part()
            except StoreError:
                raise
            except Exception:
                self.logger.exception("Recovery scan: one part failed; the others went on")

    def _forget_gone_pools(self, store: PoolStore, now: float, force: bool) -> None:
        """Hygiene (the names of pools long gone), once a minute: nothing waits on it."""
        if force or now - self._last_forget >= FORGET_EVERY:
            self._last_forget = now
            store.forget_gone_pools()

    def _move_unserved_lanes_back(self, store: PoolStore) -> None:
        for lane, moved in store.unserved_lanes_back(self.heartbeat_ttl).items():
            self.logger.warning(
                "No pool serves lane %s any more: %d message(s) moved back to %s",
                lane,
                moved,
                TULEAP_QUEUE,
            )

    def _recover_silent_workers(self, store: PoolStore, ours: set[str]) -> None:
        grace = min(self.heartbeat_ttl, self.link.down_for + SILENCE_MARGIN)
        if time.monotonic() - self.link.up_since < grace:
            # Just back after the server was away: every heartbeat may have expired while
            # nobody could beat. Live workers beat again within seconds; only those still
            # silent after as long as it was away (a heartbeat's life at most) are gone.
            return
        for worker_id in store.silent_workers(ours):
            self.recover(worker_id, f"worker {worker_id} stopped beating", silent=True)

    def _recover_tuleaps_lists(self, store: PoolStore) -> None:
        """What Tuleap's own workers left in their lists when they stopped for good (a
        hand-over to tuitop), looked at every quarter of the hold limit, a minute at most."""
        now = time.monotonic()
        if now - self._last_tuleap_scan < min(60.0, self.tuleap_hold_limit / 4):
            return
        self._last_tuleap_scan = now
        for found in store.left_behind(self.tuleap_hold_limit):
            why = (
                f"left by Tuleap's worker {found.number}: unchanged for "
                f"{self.tuleap_hold_limit:g} s, no worker {found.number} runs here"
            )
            self.logger.warning("%d message(s) %s: recovering them", found.messages, why)
            self.recover(found.worker_id, why)
