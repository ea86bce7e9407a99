"""The pool's worker processes: started, stopped, killed, reaped, held to the time limit.

The :class:`WorkerSet` owns the processes and nothing in the store: it says who exited and how
(:class:`Exit`), and the arbiter has recovery give back what they held. A worker that dies
at start (the store refused the password, a handler module is broken) is not restarted in a
tight loop: the next start waits 1, 2, 4 … 60 s, and the log says why.

A job past the time limit is first asked for its stacks (:mod:`.stacks`), then killed if
it still runs that job; the stacks go to the log and with the message, so that an admin
sees where it hung.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import psutil

from tuitop.config import DB_QUEUE, RedisSettings, Settings, StoreSettings
from tuitop.lanes import DEFAULT_LANE
from tuitop.osutil import process_running
from tuitop.pool.options import PoolOptions
from tuitop.pool.plan import describe_exit
from tuitop.pool.stacks import StackDumps
from tuitop.tasks import KILL_GRACE, end_adopted, kill_group, sweep_leftovers
from tuitop.worker.loop import worker_main
from tuitop.worker.options import worker_id_of
from tuitop.worker.status import WorkerExit, WorkerStatus

BOOT_WINDOW = 5.0
"""A worker that exits sooner than this after its start failed to start."""
BOOT_BACKOFF_MAX = 60.0
TIMEOUT_REASON = "its job ran past the time limit"
TASK_LIMIT_MARGIN = KILL_GRACE + 5.0
"""A worker stops its own task at the time limit; the pool steps in only this much later."""
FORKSERVER_LOST = 255
"""The exit code multiprocessing reports when it lost the forkserver, not the worker."""
EXIT_REASONS: dict[int, str] = {
    WorkerExit.STORE_AUTH: "{store} refused the password",
    WorkerExit.STORE_UNREACHABLE: "{store} was unreachable",
    WorkerExit.HANDLERS: "its handler modules could not be loaded",
}


def ring(descriptor: int) -> None:
    """Writes one byte on a worker's doorbell pipe; never blocks (a full pipe already
    holds a ring) and never fails (a worker gone is reaped by the pool)."""
    with contextlib.suppress(OSError):
        os.write(descriptor, b"\x01")


@dataclass
class WorkerRecord:
    """What the pool keeps about one worker process."""

    slot: int
    worker_id: str
    """``pool/slot#pid``: the id the process registers under (see worker.options.worker_id_of)."""
    process: BaseProcess
    status: WorkerStatus
    traceback_file: Path
    started: float = field(default_factory=time.monotonic)
    stopping: bool = False
    kill_reason: str = ""
    traceback: str = ""
    """Its threads' stacks when it was killed at the time limit ('' otherwise)."""
    timed_out_job: int = 0
    """The :func:`~tuitop.message.job_key` of the message it ran when killed at the time
    limit (0: none)."""
    detached: bool = False
    """Its forkserver is gone, so its exit code is lost; watched by pid until it exits."""
    store: StoreSettings = field(default_factory=RedisSettings)
    """The server it serves (the pool may have moved to another since it started)."""
    lane: str = DEFAULT_LANE
    """The lane it is for; ``serves``: the lanes it takes from, its own first."""
    serves: tuple[str, ...] = (DEFAULT_LANE,)
    bell: Any = None
    """The write end of its doorbell pipe (the database queue), or None."""
    forkserver: psutil.Process | None = None
    """Its parent, the forkserver, which adopts what the worker leaves when it is killed
    (:mod:`tuitop.forkserver_subreaper`); None when it could not be read at the start."""

    @property
    def idle(self) -> bool:
        return self.status.idle

    @property
    def timed_out(self) -> bool:
        return self.kill_reason.startswith(TIMEOUT_REASON)


@dataclass(frozen=True)
class Exit:
    """A worker that ended: how (for the log), and whether cleanly."""

    record: WorkerRecord
    how: str
    clean: bool


WORKER_PRELOAD = (
    "tuitop.worker.loop",  # worker_main's module: the worker's code, and all it imports
    # Not a speed-up: makes the forkserver adopt what a killed worker leaves running.
    "tuitop.forkserver_subreaper",
    # What a worker imports before its first command (its channel, the lease's token,
    # unpickling its status array and process, a host name's encoding at connect): each
    # new worker would pay them again, ~40 ms in all, while its slot serves nothing (a
    # worker recycled after --max-messages leaves such a gap).
    "tuitop.backends.redis.channel",
    "tuitop.backends.db",
    "secrets",
    "multiprocessing.sharedctypes",
    "multiprocessing.popen_forkserver",
    "encodings.idna",
)
"""The modules the forkserver imports once, for every worker it starts."""


def new_context() -> BaseContext:
    """Workers start from a forkserver that has imported the worker's code once
    (:data:`WORKER_PRELOAD`): a start costs a fork, not an interpreter, and holds none of
    the pool's state."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(WORKER_PRELOAD))
    return context


class WorkerSet:
    """The worker processes of one pool, by slot."""

    def __init__(
        self, options: PoolOptions, context: BaseContext, level: Any, logger: logging.Logger
    ) -> None:
        """``context`` (:func:`new_context`) starts the processes; ``level`` is the shared
        log level every worker reads live, made by that context."""
        self.options = options
        self.level = level
        self.logger = logger
        self.records: dict[int, WorkerRecord] = {}
        self._context = context
        self._supervisor_started = psutil.Process().create_time()
        self._boot_failures = 0
        self._bells = threading.Lock()
        """Held while ringing, and while a doorbell pipe is closed: a descriptor rung is
        never one closed meanwhile (and reused by another file)."""
        self.next_start_at = 0.0
        """No worker starts before this (monotonic): the back-off after failed starts."""
        self.stacks = StackDumps()

    def __iter__(self) -> Iterator[WorkerRecord]:
        return iter(list(self.records.values()))

    def __len__(self) -> int:
        return len(self.records)

    def active(self) -> dict[int, WorkerRecord]:
        """The workers not stopping, by slot."""
        return {slot: r for slot, r in self.records.items() if not r.stopping}

    def listed(self, ttl: float) -> list[WorkerRecord]:
        """The workers to list as alive in the pool's heartbeat: running, and whose
        heartbeat thread turned within ``ttl`` s (or started less than ``ttl`` ago). One
        frozen (SIGSTOP, a host thrashing) is left out: its messages are recovered once
        its own beat expired too, as for a worker of a pool that is gone."""
        now = time.monotonic()
        return [
            record
            for record in self.records.values()
            if (record.detached or record.process.is_alive())
            and (now - record.status.alive_at < ttl or now - record.started < ttl)
        ]

    def retries_scheduled(self) -> float:
        """A sum that changes when one of its workers scheduled a retry."""
        return sum(record.status.retried for record in self.records.values())

    def ask_rebeat(self) -> None:
        """Asks every worker to write its hash again (the store may have lost it)."""
        for record in self.records.values():
            record.status.ask_rebeat()

    def sentinels(self) -> list[Any]:
        """What to wait on to wake up when a worker exits."""
        return [r.process.sentinel for r in self.records.values() if not r.detached]

    def close(self) -> None:
        self.stacks.close()

    # --- start and stop ------------------------------------------------------------------

    def start(self, slot: int, settings: Settings, lane: str, serves: tuple[str, ...]) -> None:
        status = WorkerStatus.create(self._context)
        traceback_file = self.stacks.path_for(slot)
        bell_reader = bell_writer = None
        if settings.queue == DB_QUEUE:
            bell_reader, bell_writer = self._context.Pipe(duplex=False)
            os.set_blocking(bell_writer.fileno(), False)
        worker_options = self.options.worker_options(
            slot=slot,
            settings=settings,
            lane=lane,
            serves=serves,
            supervisor_started=self._supervisor_started,
            traceback_file=str(traceback_file),
        )
        process = self._context.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(worker_options, status, self.level, bell_reader),
            name=f"tuitop-worker {worker_options.slot_name}",
        )
        process.start()
        if bell_reader is not None:
            bell_reader.close()  # the worker has its own now
        worker_id = worker_id_of(worker_options.slot_name, process.pid)
        self.records[slot] = WorkerRecord(
            slot,
            worker_id,
            process,
            status,
            traceback_file,
            store=settings.store,
            lane=lane,
            serves=serves,
            bell=bell_writer,
            forkserver=_parent_of(process.pid),
        )
        self.logger.debug("Started worker %s for lane %s", worker_id, lane)

    # --- the doorbell (the database queue) -------------------------------------------------

    def any_idle(self) -> bool:
        """Whether a worker with a doorbell waits for work (safe from any thread)."""
        return any(r.idle and r.bell is not None for r in list(self.records.values()))

    def ring_idle(self) -> None:
        """Rings the doorbell of every idle worker (safe from any thread)."""
        with self._bells:
            for record in list(self.records.values()):
                if record.idle and record.bell is not None:
                    ring(record.bell.fileno())

    def _close_bell(self, record: WorkerRecord) -> None:
        with self._bells:
            if record.bell is not None:
                record.bell.close()
                record.bell = None

    def stop(self, record: WorkerRecord, why: str) -> None:
        """Asks the worker to leave after its current job (SIGTERM)."""
        if record.stopping:
            return
        record.stopping = True
        self.logger.info("Stopping worker %s after its current job (%s)", record.worker_id, why)
        self._signal(record, signal.SIGTERM)

    def stop_all(self, why: str) -> None:
        for record in self:
            self.stop(record, why)

    def kill(self, record: WorkerRecord, reason: str) -> None:
        """Kills the worker at once (SIGKILL) and its task's process group."""
        record.kill_reason = reason
        record.stopping = True
        if self._signal(record, signal.SIGKILL):
            record.process.join(timeout=1.0)  # SIGKILL is quick; reap it in this cycle
        self._kill_task_group(record)

    def _signal(self, record: WorkerRecord, signum: int) -> bool:
        if record.process.pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.process.pid, signum)
        return True

    # --- the time limit ------------------------------------------------------------------

    def enforce_time_limit(self) -> None:
        """Kills the workers whose job ran past the time limit, each first asked for its
        stacks (all asked at once, one wait for all). A job run by Tuleap's task process
        is stopped by its worker at the limit; the pool steps in only if it does not."""
        now = time.monotonic()
        overdue: list[tuple[WorkerRecord, float, float]] = []
        for record in self:
            started = record.status.job_clock
            if record.kill_reason or not record.status.busy or not started:
                continue
            limit = self.options.job_timeout
            if record.status.task_pid:
                limit += TASK_LIMIT_MARGIN
            if now - started > limit:
                overdue.append((record, started, limit))
        if not overdue:
            return
        stacks = self.stacks.ask(
            [(r.process.pid, r.traceback_file) for r, _, _ in overdue if r.process.pid]
        )
        for record, started, limit in overdue:
            if record.status.job_clock != started or not record.status.busy:
                # It ended while asked for its stacks: its next job must not pay for it.
                self.logger.warning(
                    "Worker %s ended its job past the time limit as it was asked for its "
                    "stacks: not killed",
                    record.worker_id,
                )
                continue
            self.logger.error(
                "Task timed out: worker %s ran one job for more than %.0f s; killing it",
                record.worker_id,
                limit,
            )
            record.traceback = stacks.get(record.traceback_file, "")
            record.timed_out_job = record.status.job_message
            if record.traceback:
                self.logger.error(
                    "Worker %s at its time limit:\n%s", record.worker_id, record.traceback
                )
            self.kill(record, f"{TIMEOUT_REASON} of {limit:.0f} s")

    # --- exits ---------------------------------------------------------------------------

    def reap(self) -> list[Exit]:
        """Takes out the workers that ended, says how in the log, and returns them: what
        they held is the caller's to recover."""
        exits = []
        for slot, record in list(self.records.items()):
            if not record.detached and record.process.is_alive():
                continue
            pid = record.process.pid
            if record.process.exitcode == FORKSERVER_LOST and pid and process_running(pid):
                # The forkserver died (a signal sent to the whole process group, say): the
                # exit code says the worker is gone, yet it runs. It holds its messages;
                # wait for the process itself to end before recovering anything.
                if not record.detached:
                    record.detached = record.stopping = True
                    self.logger.warning(
                        "Lost the forkserver of worker %s; it stops on its own, watching its pid",
                        record.worker_id,
                    )
                continue
            record.process.join(timeout=0)
            del self.records[slot]
            self._close_bell(record)
            self.stacks.forget(record.traceback_file)
            self._end_tasks_of(record)
            exits.append(self._account(record, time.monotonic() - record.started))
        return exits

    def _account(self, record: WorkerRecord, lived: float) -> Exit:
        code = record.process.exitcode
        how = describe_exit(code, record.detached)
        clean = code == WorkerExit.OK and not record.kill_reason
        if lived >= BOOT_WINDOW:
            self._boot_failures = 0  # it did start: whatever happened now is no boot failure
        if clean:
            self.logger.debug("Worker %s %s", record.worker_id, how)
        elif record.kill_reason:
            self.logger.warning("Worker %s %s: %s", record.worker_id, how, record.kill_reason)
        elif lived < BOOT_WINDOW or code in EXIT_REASONS:
            # Several workers failing at once are one failure, not several steps of back-off.
            if time.monotonic() >= self.next_start_at:
                self._boot_failures += 1
            delay = min(2.0 ** (self._boot_failures - 1), BOOT_BACKOFF_MAX)
            self.next_start_at = time.monotonic() + delay
            self.logger.error(
                "Worker %s %s %.1f s after its start (%s); next start in %.0f s",
                record.worker_id,
                how,
                lived,
                EXIT_REASONS.get(code or 0, "see the lines above").format(store=record.store.noun),
                delay,
            )
        else:
            self.logger.error("Worker %s %s", record.worker_id, how)
        return Exit(record, how, clean)

    def _kill_task_group(self, record: WorkerRecord) -> None:
        """Kills the process group of the task a worker killed or dead was running (its
        leader dies with the worker; what it started may live on in the group)."""
        pgid = record.status.take_task_pid()
        if pgid and kill_group(pgid):
            self.logger.warning(
                "Killed the task process group %d of worker %s", pgid, record.worker_id
            )

    def _end_tasks_of(self, record: WorkerRecord) -> None:
        """Once a worker is gone, however it ended: its task's group, and every process
        its tasks started that left the group (a daemon in a session of its own) — as
        systemd ends what a Tuleap worker's unit leaves behind when it restarts. A worker
        that exits ends those itself; those of a killed one were re-parented to the
        forkserver, whose children that are no workers are ended here, whatever their
        environment; and the processes that still name the worker in theirs
        (``TUITOP_WORKER``) are swept, wherever they went."""
        if self.options.task is None:
            return
        self._kill_task_group(record)
        if record.forkserver is not None:
            workers = {r.process.pid for r in self.records.values() if r.process.pid}
            ended = end_adopted(record.forkserver, spare=workers)
            if ended:
                self.logger.warning(
                    "Killed %d process(es) the tasks of worker %s left running: %s",
                    len(ended),
                    record.worker_id,
                    ", ".join(ended),
                )
        sweep_leftovers(lambda worker_id: worker_id != record.worker_id, self.logger)

    def alive(self, worker_id: str) -> bool:
        """Whether the worker ``pool/slot#pid`` may still run its task (for the sweep of
        task processes left behind: when unsure, alive)."""
        for record in self.records.values():
            if record.worker_id == worker_id:
                return record.process.is_alive() and not record.kill_reason
        pid = worker_id.rpartition("#")[2]
        return not (pid.isascii() and pid.isdigit()) or process_running(int(pid))

    def sweep_leftovers(self) -> None:
        """What the tasks of an earlier run of a pool killed whole left behind."""
        sweep_leftovers(self.alive, self.logger)


def _parent_of(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid).parent()
    except psutil.Error:
        return None
