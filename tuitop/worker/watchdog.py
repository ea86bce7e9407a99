"""The batch's watchdog: while a job runs long, the rest of its batch is given back to the
queue and the finished messages before it acked, so that no message waits behind a slow
job while another worker is idle. :class:`BatchGuard` is what the worker's main thread
and the watchdog (its heartbeat thread, :mod:`.heartbeat`) share of a batch."""

from __future__ import annotations

import threading

from tuitop.backends.base import CONNECT_TIMEOUT
from tuitop.message import Message
from tuitop.stats import StatsBatch
from tuitop.worker.options import HEARTBEAT_SOCKET_TIMEOUT

GIVE_BACK_AFTER = 0.050
"""A job running longer than this has the rest of its batch given back to the queue."""
ACK_WAIT = CONNECT_TIMEOUT + 3 * HEARTBEAT_SOCKET_TIMEOUT
"""The longest a job's end waits for the watchdog's ack under way (a connect and its
replies: the ack has failed by then; one still under way stays the worker's)."""
NO_STATS = StatsBatch()
"""No stats (never added to)."""


class BatchGuard:
    """What a watchdog takes over while a job runs long: the unstarted rest of the batch
    (given back to the queue, for other workers) and the finished messages not yet acked
    (acked, so that a time-limit kill does not run them again), with the stats counted so
    far (written within the heartbeat's second, so that a view does not wait for the end
    of a long job to see the jobs before it).

    The main thread arms it before each job and disarms it after; whoever takes them
    first (the watchdog, past the deadline) owns them, under the lock.
    """

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        """Held for every change, and while the worker counts into :attr:`stats` (a plain
        lock: taken a few times a job, at C speed)."""
        self.stats = StatsBatch()
        """What the worker counted and did not write yet."""
        self._running = False
        self._lock = threading.Condition(self.mutex)
        """The same lock, to wait on an ack under way."""
        self._acking = 0
        """Acks the watchdog claimed and has not yet said the fate of, in job ``_acking_job``
        (a fate said after that job's end is nobody's: its end counted them as not made)."""
        self._job = 0
        self._acking_job = -1
        self._tail: list[Message] = []
        self._acks: list[Message] = []
        self._source = ""
        self._deadline = 0.0
        self._given_back = False
        self._acked = 0
        self.armed = threading.Event()
        """Set when a tail is armed, to wake the watchdog (which clears it)."""

    def arm(
        self, tail: list[Message], deadline: float, source: str, acks: list[Message] | None = None
    ) -> None:
        """A job starts; ``tail`` (taken from the list ``source``) is given back, and
        ``acks`` (finished, the oldest first) acked, if it is still running at
        ``deadline``."""
        with self.mutex:
            self._tail, self._acks = tail, acks or []
            self._deadline, self._given_back, self._acked = deadline, False, 0
            self._source = source
            self._job += 1
            self._running = True
        # set() costs a lock; most find it set. Stats alone do not wake the watchdog: its
        # turn of the next second takes them if the job is still running then (a worker
        # fed one message at a time would wake it at every message, in its jobs' way).
        if (tail or acks) and not self.armed.is_set():
            self.armed.set()

    def disarm(self) -> tuple[bool, int]:
        """Ends the job: whether the watchdog gave the tail back meanwhile, and how many
        of the acks (the first ones) it acked — waiting for an ack under way to succeed
        or fail. Those it could not ack, or not in time, stay the worker's to ack (acked
        twice, the second ack finds them gone: never run twice)."""
        with self.mutex:
            self._tail, self._acks = [], []
            self._running = False
            if self._acking:
                self._lock.wait_for(lambda: not self._acking, timeout=ACK_WAIT)
            acked = max(self._acked - self._acking, 0)
            self._acked, self._acking, self._acking_job = acked, 0, -1
            return self._given_back, acked

    def acks_settled(self, acked: bool) -> None:
        """For the watchdog: the acks it claimed were acked, or not (the store did not
        answer: they stay pending, for the worker's next ack)."""
        with self._lock:
            if self._acking_job != self._job or not self._acking:
                return  # its job ended meanwhile, and counted them as not acked
            if not acked:
                self._acked = max(self._acked - self._acking, 0)
            self._acking = 0
            self._lock.notify_all()

    def claim_if_late(self, now: float) -> tuple[list[Message], str, list[Message], StatsBatch]:
        """For the watchdog: the tail, where it came from, the acks and the stats counted,
        if the running job is past its deadline (the worker counts into a new batch)."""
        with self._lock:
            if not self._pending() or now < self._deadline:
                return [], self._source, [], NO_STATS
            tail, acks, self._tail, self._acks = self._tail, self._acks, [], []
            stats = NO_STATS
            if self.stats.fields:
                stats, self.stats = self.stats, self.stats.successor()
            self._given_back = self._given_back or bool(tail)
            self._acked += len(acks)
            self._acking, self._acking_job = len(acks), self._job
            return tail, self._source, acks, stats

    def _pending(self) -> bool:
        """Whether a job runs with something for the watchdog to take past its deadline."""
        return self._running and bool(self._tail or self._acks or self.stats.fields)

    def seconds_left(self, now: float) -> float | None:
        with self._lock:
            return max(self._deadline - now, 0.0) if self._pending() else None
