"""Recovery: what a gone worker held goes back to the queue (or to the dead letters).

A worker's processing list is recovered — each message retried with one try more, or
dead-lettered past the tries — when:

* it exits, whatever way (at once, by the pool that ran it);
* its heartbeat expired, on any host (looked for every 5 s by every pool: a host that died
  whole is recovered by the others, with a check in the same transaction that it did not
  beat again meanwhile);
* it is one of Tuleap's own workers' lists, unchanged for ``tuleap_hold_limit`` while no
  Tuleap worker of that number runs here (:mod:`tuitop.tuleapworkers`).

The same scan moves back the lanes no pool serves any more and forgets pools long gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import cast

import redis

from tuitop import keys, tuleapworkers
from tuitop.config import RedisSettings
from tuitop.pool.link import RedisLink
from tuitop.queue import Queue
from tuitop.redisconn import describe_error
from tuitop.stats import StatsBatch

ORPHAN_SCAN_EVERY = 5.0


class Recovery:
    """Recovers, on ``link``'s Redis, what workers that are gone held."""

    def __init__(
        self,
        link: RedisLink,
        *,
        heartbeat_ttl: float,
        tuleap_hold_limit: float,
        logger: logging.Logger,
    ) -> None:
        self.link = link
        self.heartbeat_ttl = heartbeat_ttl
        self.tuleap_hold_limit = tuleap_hold_limit
        self.logger = logger
        self._last_scan = 0.0
        self._last_tuleap_scan = 0.0

    def recover(
        self,
        worker_id: str,
        reason: str,
        *,
        timed_out: bool = False,
        traceback: str = "",
        silent: bool = False,
    ) -> None:
        """Gives back what ``worker_id`` held; left for the next scan while Redis is down
        (the worker stays registered until then). ``silent``: only if it does not beat."""
        link = self.link
        if not link.ok or link.queue is None or link.client is None:
            return
        try:
            recovery = link.queue.recover(
                worker_id, reason, unless_beating=silent, traceback=traceback
            )
            pipe = link.client.pipeline(transaction=False)
            pipe.delete(keys.heartbeat(worker_id))
            if timed_out:
                batch = StatsBatch()
                batch.outcome("timedout")
                batch.flush_into(pipe, time.time())
            pipe.execute()
        except redis.RedisError as error:
            link.failed(error)
            return
        except Exception:
            # Recovery must never take the pool down; the messages stay where they are.
            self.logger.exception("Could not recover the messages of worker %s", worker_id)
            return
        if recovery.total:
            self.logger.warning(
                "Recovered %d message(s) of worker %s: %d will be retried, %d dead-lettered",
                recovery.total,
                worker_id,
                recovery.requeued,
                recovery.dead_lettered,
            )

    def recover_left_behind(
        self, queue: Queue, where: RedisSettings, worker_id: str, reason: str
    ) -> None:
        """A worker of a Redis the pool left: its list is recovered there, and said so."""
        try:
            recovery = queue.recover(worker_id, reason)
        except redis.RedisError as error:
            self.logger.error(
                "Could not recover worker %s's messages on the Redis left behind (%s): %s",
                worker_id,
                where.address,
                describe_error(error, where),
            )
            return
        if recovery.total:
            self.logger.warning(
                "Recovered %d message(s) of worker %s on the Redis left behind (%s)",
                recovery.total,
                worker_id,
                where.address,
            )

    def scan(self, ours: set[str], *, force: bool = False) -> None:
        """Every ``ORPHAN_SCAN_EVERY`` s (or now, with ``force``): the lists of registered
        workers not in ``ours`` whose heartbeat expired, Tuleap's workers' lists left
        behind, the lanes no pool serves, the pools long gone. Raises redis.RedisError."""
        now = time.monotonic()
        if not force and now - self._last_scan < ORPHAN_SCAN_EVERY:
            return
        self._last_scan = now
        client, queue = self.link.client, self.link.queue
        assert client is not None and queue is not None
        # Each part on its own: one that fails (a bug, a key written by something else)
        # must not keep the others from running. Redis errors go up (Redis is away).
        parts: list[Callable[[], None]] = [
            lambda: self._move_unserved_lanes_back(queue),
            lambda: self._forget_gone_pools(client),
            lambda: self._recover_tuleaps_lists(client),
            lambda: self._recover_silent_workers(client, ours),
        ]
        for part in parts:
            try:
                part()
            except redis.RedisError:
                raise
            except Exception:
                self.logger.exception("Recovery scan: one part failed; the others went on")

    def _move_unserved_lanes_back(self, queue: Queue) -> None:
        for lane, moved in queue.recover_unserved_lanes(self.heartbeat_ttl).items():
            self.logger.warning(
                "No pool serves lane %s any more: %d message(s) moved back to %s",
                lane,
                moved,
                keys.QUEUE,
            )

    def _recover_silent_workers(self, client: redis.Redis, ours: set[str]) -> None:
        raw_members = cast(set[bytes], client.smembers(keys.WORKERS))
        if junk := keys.not_names_in(raw_members):
            client.srem(keys.WORKERS, *junk)  # no worker of a tuitop's: no list to recover
        candidates = [
            worker_id for worker_id in keys.names_in(raw_members) if worker_id not in ours
        ]
        if not candidates:
            return
        pipe = client.pipeline(transaction=False)
        for worker_id in candidates:
            pipe.exists(keys.heartbeat(worker_id))
        for worker_id, alive in zip(candidates, pipe.execute(), strict=True):
            if not alive:
                self.recover(worker_id, f"worker {worker_id} stopped beating", silent=True)

    def _recover_tuleaps_lists(self, client: redis.Redis) -> None:
        """What Tuleap's own workers left in their lists when they stopped for good (a
        hand-over to tuitop), looked at every quarter of the hold limit, a minute at most."""
        now = time.monotonic()
        if now - self._last_tuleap_scan < min(60.0, self.tuleap_hold_limit / 4):
            return
        self._last_tuleap_scan = now
        for found in tuleapworkers.left_behind(client, self.tuleap_hold_limit):
            why = (
                f"left by Tuleap's worker {found.number}: unchanged for "
                f"{self.tuleap_hold_limit:g} s, no worker {found.number} runs here"
            )
            self.logger.warning("%d message(s) %s: recovering them", found.messages, why)
            self.recover(found.worker_id, why)

    def _forget_gone_pools(self, client: redis.Redis) -> None:
        """Takes out of the set of pools those with neither a heartbeat nor a name claim:
        every view reads each name it holds, so a set that only grows costs more and more."""
        members = cast(set[bytes], client.smembers(keys.POOLS))
        if junk := keys.not_names_in(members):
            client.srem(keys.POOLS, *junk)
        names = keys.names_in(members)
        if not names:
            return
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.exists(keys.pool(name), keys.pool(name) + ":owner")
        gone = [name for name, alive in zip(names, pipe.execute(), strict=True) if not alive]
        if gone:
            client.srem(keys.POOLS, *gone)
