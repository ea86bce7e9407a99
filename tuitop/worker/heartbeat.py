"""The worker's heartbeat thread (:class:`Heartbeat`), which turns every second until the
process ends: it stamps the shared memory the local supervisor reads (which lists the
worker as alive in the pool's own heartbeat, and enforces the job time limit), writes the
worker's hash in the store when it changed (an idle worker's does not: an idle pool costs
the store the same whatever its number of workers), and starts a warm stop when the
supervisor is gone (from then on it beats on its own, as no pool lists it any more). It is
also the batch's watchdog (:mod:`.watchdog`): it gives back a slow job's batch tail."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

import psutil

from tuitop.backends.errors import StoreError
from tuitop.log import reopen_log_files
from tuitop.message import Message
from tuitop.osutil import ProcessTree, process_running
from tuitop.stats import StatsBatch
from tuitop.worker.options import HEARTBEAT_SOCKET_TIMEOUT, WorkerOptions
from tuitop.worker.status import WorkerStatus
from tuitop.worker.watchdog import BatchGuard

if TYPE_CHECKING:
    from tuitop.backends.base import WorkerChannel
    from tuitop.beats import WorkerBeat
    from tuitop.tasks import TaskRunner


class Beating(Protocol):
    """What the heartbeat reads and asks of its worker (:class:`~tuitop.worker.loop.Worker`),
    named here so that the thread depends on the worker's face, not on its loop."""

    id: str
    options: WorkerOptions
    status: WorkerStatus
    channel: WorkerChannel
    batch: BatchGuard
    logger: logging.Logger
    tasks: TaskRunner | None
    lost: str
    """Why its hands are not what it thinks (set here when its acks find messages gone)."""

    def make_beat(self, process: ProcessTree | None = None) -> WorkerBeat: ...

    def unheard(self, now: float) -> bool: ...

    def write_beat(self, channel: WorkerChannel, beat: WorkerBeat) -> None: ...


class Heartbeat(threading.Thread):
    """Beats every ``heartbeat_interval`` on its channel's companion until the process ends;
    gives back a slow job's batch tail; starts a warm stop when the supervisor is gone;
    lets go of a worker_log logrotate moved."""

    def __init__(self, worker: Beating) -> None:
        super().__init__(name=f"heartbeat-{worker.id}", daemon=True)
        self.worker = worker
        self._stopped = threading.Event()
        self._channel = worker.channel.companion(f"tuitop:{worker.id}:hb", HEARTBEAT_SOCKET_TIMEOUT)
        self._process = ProcessTree(psutil.Process())

    def run(self) -> None:
        options = self.worker.options
        status = self.worker.status
        next_beat = time.monotonic()
        orphaned = failing = False
        written: dict[str, Any] | None = None
        """What it last wrote, but the time and the measures."""
        written_at = time.monotonic()
        while not self._stopped.is_set():
            now = time.monotonic()
            tail, source, acks, stats = self.worker.batch.claim_if_late(now)
            if tail:
                self._give_back(tail, source)
            if acks or stats.fields:
                self._ack(acks, stats)
            if now >= next_beat:
                next_beat = now + options.heartbeat_interval
                if not orphaned and not process_running(
                    options.supervisor_pid, options.supervisor_started
                ):
                    orphaned = True
                    self.worker.logger.warning(
                        "Worker %s: its supervisor is gone; stopping after the current job",
                        self.worker.id,
                    )
                    # The main thread may be blocked waiting for work: a signal wakes it.
                    os.kill(os.getpid(), signal.SIGTERM)
                    if self.worker.tasks is not None:
                        # No pool is left to enforce its time limit or to stop it: the
                        # task gets the pool's grace period, then its tree is killed.
                        self.worker.tasks.cut_short(options.grace_period, "the pool is gone")
                status.alive_at = now
                # An idle worker writes no line: it lets go of a rotated log here.
                reopen_log_files(self.worker.logger)
                # Measured (the process tree walked) only when it is written.
                beat = self.worker.make_beat()
                state = {**beat.fields(), "beat": 0}
                due = (
                    state != written
                    or beat.state == "busy"  # its CPU and memory are worth showing
                    or orphaned  # no pool lists it: it says it is alive itself
                    # Its pool has not vouched for it lately (its loop stalled, its writes
                    # fail): it says so itself before its pool's hash may expire.
                    or self.worker.unheard(now)
                    or failing
                    or status.rebeat
                    or now - written_at >= self._channel.rebeat_every
                    or not self._channel.beats_when_changed
                )
                try:
                    if due:
                        rebeat = status.rebeat
                        self.worker.write_beat(self._channel, self.worker.make_beat(self._process))
                        written, written_at = state, now
                        if rebeat:
                            status.clear_rebeat()
                    failing = False
                except StoreError as error:
                    if not failing:
                        self.worker.logger.debug(
                            "Worker %s: heartbeat failed: %s", self.worker.id, error
                        )
                    failing = True
            now = time.monotonic()
            tail_due = self.worker.batch.seconds_left(now)
            if tail_due is not None:
                # A batch is running: look again when its current job would be late. Arms
                # meanwhile do not wake this thread, so a fast batch costs ~20 wakes/s.
                self._stopped.wait(max(min(next_beat - now, tail_due + 0.001), 0.0))
                continue
            batch = self.worker.batch
            batch.armed.wait(max(next_beat - now, 0.0))
            batch.armed.clear()

    def _give_back(self, tail: list[Message], source: str) -> None:
        try:
            self._channel.give_back(self.worker.id, tail, source)
        except StoreError as error:
            # They stay in the processing list; the worker gives them back once settled.
            self.worker.logger.warning(
                "Worker %s: could not give back %d message(s): %s", self.worker.id, len(tail), error
            )
            return
        self.worker.logger.debug(
            "Worker %s: job running long, gave back %d message(s) of its batch",
            self.worker.id,
            len(tail),
        )

    def _ack(self, acks: list[Message], stats: StatsBatch) -> None:
        """Acks what the worker finished before the job that runs long, and writes what
        it counted (stats the store did not take are lost: only counts)."""
        acked = False
        all_there = True
        try:
            all_there = self._channel.ack(self.worker.id, acks, stats)
            acked = True
        except StoreError as error:
            self.worker.logger.warning(
                "Worker %s: could not ack %d message(s) yet: %s", self.worker.id, len(acks), error
            )
        finally:
            # Not acked, they are still in its list and finished: the worker acks them
            # itself after the job (dropped, its end would give them back: run twice).
            self.worker.batch.acks_settled(acked=acked)
        if not all_there:
            self.worker.lost = "its acks found messages no longer in its list"

    def stop(self) -> None:
        self._stopped.set()
        self.worker.batch.armed.set()
        self.join(timeout=5)
        self._channel.close()
