"""What a worker process and its pool share: a :class:`WorkerStatus` over one array of
doubles in shared memory (gunicorn's ``WorkerTmp``: the liveness both sides read is a
named object, not raw indexes), the worker's states (:class:`WorkerState`) and the exit
codes the pool reads to say why a worker could not start (:class:`WorkerExit`).

No lock: the array is a ``RawArray`` (``multiprocessing.sharedctypes``), each slot one
aligned double, written by a single store and read by a single load: a reader sees the
old value or the new, never a mix. Every slot has one writer but two, set by one side and
cleared by the other (``rebeat``: asked by the pool, cleared by the worker's heartbeat
thread; ``task_pid``: set by the worker, cleared by the pool once the worker is dead):
their docstrings say why that is safe. The counters are a read-modify-write by their one
writer, the worker's main thread. The worker writes on its path of every message: each
method here is a few stores, no more.

A slot's number is this module's own: nothing else indexes the array.
"""

from __future__ import annotations

import time
from enum import Enum, IntEnum
from multiprocessing.context import BaseContext
from typing import Any, Protocol, cast


class StatusArray(Protocol):
    """The shared array (``RawArray("d", …)``), or a list for a worker run in-process."""

    def __getitem__(self, index: int) -> float: ...

    def __setitem__(self, index: int, value: float) -> None: ...


class WorkerState(float, Enum):
    """Where a worker is in its life; stored as the float it is (a new array reads
    ``STARTING``)."""

    STARTING = 0.0
    IDLE = 1.0
    BUSY = 2.0
    STOPPING = 3.0

    @property
    def label(self) -> str:
        """The name in the worker's heartbeat (``"idle"``): what views show."""
        return self.name.lower()


class WorkerExit(IntEnum):
    """A worker's exit codes, which the supervisor reads to say why it could not start."""

    OK = 0
    CRASH = 1
    STORE_AUTH = 3
    """The queue's server (Redis, the database) refused the credentials."""
    STORE_UNREACHABLE = 4
    HANDLERS = 5
    """Its handler modules could not be loaded."""


# The slots. Times are CLOCK_MONOTONIC (system-wide on Linux: the pool and the worker read
# the same clock) unless a docstring says wall time.
_STATE, _SINCE, _JOB_STARTED, _DONE, _FAILED, _PROCESSED, _JOB_CLOCK, _TASK_PID = range(8)
_ALIVE, _LISTED, _REBEAT, _RETRIED, _JOB_MESSAGE = range(8, 13)
_SLOTS = 13

_STATES = {float(state): state for state in WorkerState}
_IDLE = float(WorkerState.IDLE)
_BUSY = float(WorkerState.BUSY)


class WorkerStatus:
    """One worker's shared status: made by the pool (:meth:`create`) before the worker
    starts, handed to the new process (it pickles as its array, which multiprocessing
    passes as shared memory), and wrapped again there over that same array."""

    __slots__ = ("_array",)

    def __init__(self, array: StatusArray) -> None:
        """Over ``array``: the one the pool allocated, or any array of 13 doubles."""
        self._array = array

    @classmethod
    def create(cls, context: BaseContext | None = None) -> WorkerStatus:
        """A new status, all zero (``STARTING``): in shared memory from ``context``, or
        private to this process without one (a worker run in-process: tests, benches)."""
        if context is None:
            return cls([0.0] * _SLOTS)
        return cls(cast(StatusArray, context.RawArray("d", _SLOTS)))

    def __reduce__(self) -> tuple[Any, ...]:
        return (WorkerStatus, (self._array,))

    # --- the state ------------------------------------------------------------------------

    @property
    def state(self) -> WorkerState:
        """Written by the worker's main thread (:meth:`enter`): ``STARTING`` as it sets up,
        ``IDLE`` before each wait for work, ``BUSY`` at the first job of a batch
        (:meth:`job_began`: it stays busy through the batch), ``STOPPING`` as it leaves.
        Read by its heartbeat thread (the state it publishes) and by the pool: its
        doorbell rings the idle workers (:attr:`idle`), its time limit holds the busy ones
        (:attr:`busy`), its systemd status counts the idle and busy as registered. Always
        one of the four; it may change right after a read (a reader that acts on it reads
        again first, as the time limit does with :attr:`job_clock`)."""
        return _STATES[self._array[_STATE]]

    @property
    def idle(self) -> bool:
        """``state is IDLE``, without making the enum (the pool asks it from any thread)."""
        return self._array[_STATE] == _IDLE

    @property
    def busy(self) -> bool:
        """``state is BUSY``, without making the enum (the worker asks at every job)."""
        return self._array[_STATE] == _BUSY

    @property
    def since(self) -> float:
        """Wall time (``time.time()``) the worker entered its state; written with it, just
        after it (a reader may see the new state with the old time for that instant). Read
        by the heartbeat thread, for display only."""
        return self._array[_SINCE]

    def enter(self, state: WorkerState) -> None:
        """For the worker's main thread: it is now in ``state`` (and :attr:`since`)."""
        array = self._array
        array[_STATE] = float(state)
        array[_SINCE] = time.time()

    # --- the job running ------------------------------------------------------------------

    @property
    def job_started(self) -> float:
        """Wall time the job running started, 0 between jobs. Written by the worker's main
        thread (:meth:`job_began`, :meth:`job_ended`), read by its heartbeat thread, for
        display; the time limit reads :attr:`job_clock` (a step of the wall clock never
        kills a job)."""
        return self._array[_JOB_STARTED]

    @property
    def job_clock(self) -> float:
        """CLOCK_MONOTONIC when the job running started, 0 between jobs: written by the
        worker's main thread, read by the pool to hold it to the time limit. A job's
        value is never another's: the same non-zero value read twice (with the state
        busy) means the same job still runs, which the pool checks again after it asked
        for the worker's stacks and before it kills it."""
        return self._array[_JOB_CLOCK]

    @property
    def job_message(self) -> int:
        """The :func:`~tuitop.message.job_key` of the message whose job runs, 0 between
        jobs: written by the worker's main thread, read by the pool when it kills the
        worker at the time limit (the one message it gives up). Written before
        :attr:`job_clock` at a job's start and cleared after it at its end: read once the
        pool saw that job's clock, it is that job's key unless the job ended in between
        (the instant between the pool's two reads)."""
        return int(self._array[_JOB_MESSAGE])

    def job_began(self, wall: float, key: int, clock: float) -> None:
        """For the worker's main thread: a job starts, at wall time ``wall`` and monotonic
        ``clock``, for the message of job key ``key`` (written in that order: see
        :attr:`job_message`); then the worker is busy (its state and :attr:`since` written
        as :meth:`enter` writes them, at the first job of a batch: through a batch it
        stays busy). One call: the worker makes it for every message."""
        array = self._array
        array[_JOB_STARTED] = wall
        array[_JOB_MESSAGE] = key
        array[_JOB_CLOCK] = clock
        if array[_STATE] != _BUSY:
            array[_STATE] = _BUSY
            array[_SINCE] = time.time()

    def job_ended(self) -> None:
        """For the worker's main thread: the job ended, however (one more
        :attr:`processed`)."""
        array = self._array
        array[_PROCESSED] += 1
        array[_JOB_STARTED] = 0.0
        array[_JOB_CLOCK] = 0.0
        array[_JOB_MESSAGE] = 0.0

    @property
    def task_pid(self) -> int:
        """The task process the job runs (Tuleap's, :mod:`tuitop.tasks`), which leads its
        own process group, 0 when none. The worker's main thread writes it as its task
        starts and ends (``Job.child_started``); the pool reads it for the time limit (a
        task's is the worker's own to enforce: the pool steps in only later) and kills
        that group when the worker was killed or died (:meth:`take_task_pid`): a worker
        killed never clears it, and one gone never sets it again."""
        return int(self._array[_TASK_PID])

    @task_pid.setter
    def task_pid(self, pid: int) -> None:
        self._array[_TASK_PID] = pid

    def take_task_pid(self) -> int:
        """For the pool, once the worker was killed or is gone: :attr:`task_pid`, cleared
        (its group is killed once)."""
        pid = self.task_pid
        self._array[_TASK_PID] = 0
        return pid

    # --- the counters ---------------------------------------------------------------------

    @property
    def done(self) -> int:
        """Jobs done (their handler returned), since the worker started. Written by its
        main thread (:meth:`count_done`), read by its heartbeat (views show it)."""
        return int(self._array[_DONE])

    @property
    def failed(self) -> int:
        """Jobs failed (their handler raised, or no handler could run them: retried or
        not; or tuitop failed on them). Written by the worker's main thread
        (:meth:`count_failed`), read by its heartbeat (views show it)."""
        return int(self._array[_FAILED])

    @property
    def processed(self) -> int:
        """Jobs ended, however (:meth:`job_ended`). Written and read by the worker's main
        thread (its ``max_messages``, the size of its next take), read by its heartbeat."""
        return int(self._array[_PROCESSED])

    @property
    def retried(self) -> int:
        """Messages the worker scheduled for a retry (:meth:`count_retried`). The pool
        reads when the next retry is due again when the sum of its workers' changes, not
        only with its heartbeat; it relies only on a change, never on the number."""
        return int(self._array[_RETRIED])

    def count_done(self) -> None:
        """For the worker's main thread: one more :attr:`done`."""
        self._array[_DONE] += 1

    def count_failed(self) -> None:
        """For the worker's main thread: one more :attr:`failed`."""
        self._array[_FAILED] += 1

    def count_retried(self) -> None:
        """For the worker's main thread: one more :attr:`retried`."""
        self._array[_RETRIED] += 1

    # --- liveness -------------------------------------------------------------------------

    @property
    def alive_at(self) -> float:
        """CLOCK_MONOTONIC of the heartbeat thread's last turn (0 before its first). Written
        by that thread every ``heartbeat_interval``; read by the pool, which lists the
        worker as alive in its own heartbeat while it is recent (one frozen, its thread
        stopped too, drops out), and stamps :attr:`listed_at` from it."""
        return self._array[_ALIVE]

    @alive_at.setter
    def alive_at(self, now: float) -> None:
        self._array[_ALIVE] = now

    @property
    def listed_at(self) -> float:
        """CLOCK_MONOTONIC of the pool's last heartbeat that got through listing the
        worker, or the :attr:`alive_at` that listing stood on if older (a listing vouches
        for a TTL after the worker's own last turn, no more); 0 before the first. Written
        by the pool; read by the worker (both threads) on Redis, where its pool's listing
        vouches for it in the store: silent past half a TTL (neither its own beat nor
        this), it asks the store whether its lease is still there before its next job."""
        return self._array[_LISTED]

    @listed_at.setter
    def listed_at(self, at: float) -> None:
        self._array[_LISTED] = at

    @property
    def rebeat(self) -> bool:
        """Whether the worker's heartbeat thread must write the worker's hash at its next
        turn, changed or not (an idle worker's is otherwise written only when it changed,
        or every ``WORKER_HASH_REFRESH``). Asked by the pool when the store came back (it
        may have lost the hash), or by the worker's main thread when it found the store
        back; cleared by the heartbeat thread after a write that followed the request (a
        request made while that write was under way is taken as served by it)."""
        return bool(self._array[_REBEAT])

    def ask_rebeat(self) -> None:
        """For the pool or the worker: see :attr:`rebeat`."""
        self._array[_REBEAT] = 1.0

    def clear_rebeat(self) -> None:
        """For the heartbeat thread, once it wrote the hash: see :attr:`rebeat`."""
        self._array[_REBEAT] = 0.0
