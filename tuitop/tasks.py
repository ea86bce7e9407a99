"""Tuleap's task process: one child process per job, as Tuleap's own worker runs it.

Tuleap's worker (``src/utils/worker.php``, ``TaskWorkerProcess``) runs every message it
takes as ``tuleap queue:task-worker-process`` in Tuleap's source root, with the environment
plus ``SHELL_VERBOSITY=1`` and ``TLP_DELAY_CRON_CMD=0`` (and ``PWD``, set by the shell
Symfony's Process runs it through), the message on its stdin — in Redis exactly as stored,
from the database as PHP writes the row again (:mod:`tuitop.phpjson`) — and a 15-minute
limit; exit status 0 means done. :class:`TaskRunner`
does the same, and keeps promises Tuleap's does not:

* the task is its own process group, so a time limit kills its whole tree (SIGTERM to the
  group, SIGKILL ``kill_grace`` seconds later), and a SIGINT from a terminal, which
  reaches the pool's group, never reaches it;
* the task dies with its worker (``PR_SET_PDEATHSIG``, set by util-linux's ``setpriv``
  exec'd in front of the command where it has ``--pdeathsig``, else between fork and exec,
  which costs a fork instead of a vfork: six times the start of a small program): a worker
  killed by any means leaves no task running; what the task started itself is still in its
  group, which the pool kills when it reaps the worker (:func:`kill_group`);
* processes a task leaves in its group when it exits are stopped with it;
* what a task leaves running outside its group — a daemon in a session of its own, its
  environment reset (``setsid env -i``, sudo's ``env_reset``) — is found by the one thing
  it cannot shed, its parent: the worker is the child subreaper of its tasks' trees
  (``PR_SET_CHILD_SUBREAPER``), so such an orphan is re-parented to the worker, not to
  init. It runs on while the worker does (a ``git gc --auto`` finishes), is reaped when
  a task ends after it did (a zombie until then), and is ended when the worker exits
  (:meth:`TaskRunner.end_orphans`). A killed worker's children go to the forkserver, a
  subreaper too (:mod:`tuitop.forkserver_subreaper`), whose children that are no workers
  the pool ends as it reaps the worker (:func:`end_adopted`);
* every process of the tree carries ``TUITOP_WORKER`` in its environment unless it resets
  it, so a pool that was killed whole (pool, forkserver and workers) finds at its next
  start what its tasks left that kept it (:func:`sweep_leftovers`). What it left without
  it went to init and is not found: under systemd, the unit's cgroup ends it as the unit
  stops (``KillMode=mixed``); elsewhere it escapes. So do processes of another user (the
  kill is refused), those a worker leaves when it is killed after its forkserver died,
  and jobs a task hands to another service (``systemd-run``, ``at``, ssh), never its
  descendants;
* its output goes to the worker_log line by line, at most ``log_limit`` bytes a job, and
  the last ``tail_limit`` bytes of its stderr are kept for the dead letter: memory stays
  bounded whatever the task writes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import selectors
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from tuitop.config import MASK, mask_spans, secret_spans
from tuitop.handlers import Handler, Job, RetryLater
from tuitop.osutil import (
    become_child_subreaper,
    child_pids,
    parent_death_signal_available,
    set_parent_death_signal,
)
from tuitop.outcome import Outcome

TULEAP_CLI = "/usr/bin/tuleap"
TULEAP_SOURCE_ROOT = "/usr/share/tuleap"
TULEAP_TASK_ARGV = ("tuleap", "queue:task-worker-process")
TASK_ENVIRONMENT = {"SHELL_VERBOSITY": "1", "TLP_DELAY_CRON_CMD": "0"}
"""What Tuleap's worker adds to the environment of its task process."""
WORKER_MARKER = "TUITOP_WORKER"
"""Environment variable naming the worker that started a task (inherited by its tree)."""

KILL_GRACE = 5.0
"""Seconds between the SIGTERM and the SIGKILL of a task's group."""
LOG_LIMIT = 64 * 1024
"""Bytes of a job's output written to the worker_log; the rest is counted, not logged."""
TAIL_LIMIT = 4 * 1024
"""Bytes of the end of a task's stderr kept for the dead letter."""
LEFTOVER_WAIT = 0.2
"""Seconds the processes a finished task left behind get between SIGTERM and SIGKILL."""
ADOPTED_ROUNDS = 5
"""Times :func:`end_adopted` looks again for what the processes it ended left to their
adopter (their own children, re-parented to it as they die)."""
_MASK = MASK.encode()
_READ_SIZE = 64 * 1024
_POLL = 0.25
"""Longest wait between two looks at the deadline (another thread may move it)."""


class TaskStartError(Exception):
    """The task command could not be started (missing, not executable, bad directory)."""


@dataclass(frozen=True)
class TaskCommand:
    """What to run for a job, and where."""

    argv: tuple[str, ...]
    directory: str

    @classmethod
    def parse(cls, command_line: str, directory: str) -> TaskCommand:
        """Splits ``command_line`` as a POSIX shell would (no shell runs it) and checks
        that it can run; raises ValueError saying why not."""
        try:
            argv = tuple(shlex.split(command_line))
        except ValueError as error:
            raise ValueError(f"--task-command {command_line!r}: {error}") from None
        if not argv:
            raise ValueError("--task-command is empty")
        if not os.path.isdir(directory):
            raise ValueError(f"--task-dir {directory}: not a directory")
        program = argv[0]
        if "/" in program:
            # A relative path is relative to the task's directory, where it runs.
            path = os.path.join(directory, program)
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                raise ValueError(f"--task-command: {program} is not an executable file")
        elif shutil.which(program) is None:
            raise ValueError(f"--task-command: {program} is not found on the PATH")
        return cls(argv, directory)

    def describe(self) -> str:
        return f"{shlex.join(self.argv)} (in {self.directory})"


def default_task_command() -> TaskCommand | None:
    """Tuleap's own task command on a host where Tuleap is installed, else None."""
    if os.path.exists(TULEAP_CLI) and os.path.isdir(TULEAP_SOURCE_ROOT):
        return TaskCommand(TULEAP_TASK_ARGV, TULEAP_SOURCE_ROOT)
    return None


@dataclass(frozen=True)
class TaskOutcome:
    """How a task ended."""

    returncode: int
    """The exit status, or minus the signal that killed it (as ``subprocess`` says)."""
    seconds: float
    stderr_tail: str
    """The end of its stderr (at most ``tail_limit`` bytes), decoded leniently, the
    runner's secrets masked."""
    output_bytes: int
    """Bytes it wrote on stdout and stderr together."""
    killed_because: str = ""
    """Why tuitop killed it ('' when it ended on its own)."""
    timed_out: bool = False
    """Killed for running past the time limit (not because the pool went away)."""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.killed_because

    def describe(self) -> str:
        """e.g. 'exited with status 3', 'was killed by SIGKILL (it ran past ...)'."""
        if self.returncode >= 0:
            how = f"exited with status {self.returncode}"
        else:
            try:
                how = f"was killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                how = f"was killed by signal {-self.returncode}"
        if self.killed_because:
            how = f"{how} ({self.killed_because})"
        return f"task {how} after {self.seconds:.1f} s"

    def last_line(self) -> str:
        """The last non-empty line of its stderr, for a one-line reason."""
        for line in reversed(self.stderr_tail.splitlines()):
            if line.strip():
                return line.strip()
        return ""


class _Output:
    """One job's output on its way to the log: split in lines, bounded, and masked before
    anything is cut, so that no cut splits a secret into two halves that pass unmasked."""

    def __init__(
        self, logger: logging.Logger, log_limit: int, tail_limit: int, secrets: Sequence[str]
    ) -> None:
        self.logger = logger
        self.log_limit = log_limit
        self.tail_limit = tail_limit
        self.logged = 0
        self.dropped = 0
        self.total = 0
        self._secrets = sorted((s.encode() for s in secrets if s), key=len, reverse=True)
        self._overlap = max((len(s) for s in self._secrets), default=1) - 1
        """What a cut keeps back: a secret begun before it is whole on one side."""
        self._tail = bytearray()
        self._trimmed = False
        self._partial: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}

    def _mask(self, data: bytes) -> bytes:
        return mask_spans(data, self._secrets, _MASK)

    @property
    def stderr_tail(self) -> str:
        """The end of its stderr, at most ``tail_limit`` bytes, secrets masked."""
        raw = bytes(self._tail)
        if self._trimmed:
            # The trim may have cut a secret: what is left of it begins the buffer, the end
            # of a secret, which masking cannot see: dropped (the longest such beginning).
            cut = max(
                (k for secret in self._secrets for k in range(1, len(secret))
                 if raw.startswith(secret[-k:])),
                default=0,
            )  # fmt: skip
            raw = raw[cut:]
        # Masked whole, then cut: a cut can only split a mask or plain text.
        return self._mask(raw)[-self.tail_limit :].decode("utf-8", "replace")

    def _safe_cut(self, data: bytes, cut: int) -> int:
        """``cut``, moved out of the secret it would fall inside: to its start, or past its
        end when it starts the buffer (the buffer must shrink)."""
        for begin, end in secret_spans(data, self._secrets):
            if begin < cut < end:
                return begin if begin > 0 else end
        return cut

    def add(self, stream: str, data: bytes) -> None:
        self.total += len(data)
        if stream == "stderr":
            self._tail += data
            keep = self.tail_limit + self._overlap
            if len(self._tail) > keep:
                del self._tail[:-keep]
                self._trimmed = True
        if self.logged >= self.log_limit:
            self.dropped += len(data)  # past the limit it is only counted, not split
            return
        partial = self._partial[stream]
        partial += data
        *lines, rest = bytes(partial).split(b"\n")
        # A line longer than the tail is cut: the buffer never grows past it. Cut raw, kept
        # back far enough that a secret begun before the cut is whole on one side.
        if len(rest) > self.tail_limit:
            cut = self._safe_cut(rest, len(rest) - self._overlap)
            lines.append(self._mask(rest[:cut]))
            rest = rest[cut:]
        partial[:] = rest
        for line in lines:
            self._log(stream, line)

    def close(self) -> None:
        for stream, partial in self._partial.items():
            if partial:
                self._log(stream, bytes(partial))
                partial.clear()
        if self.dropped:
            self.logger.warning("task output: %d more byte(s) not logged", self.dropped)

    def _log(self, stream: str, line: bytes) -> None:
        if self.logged + len(line) > self.log_limit:
            self.dropped += len(line) + 1
            return
        self.logged += len(line) + 1
        level = logging.WARNING if stream == "stderr" else logging.INFO
        if self.logger.isEnabledFor(level):
            self.logger.log(level, "task %s: %s", stream, line.decode("utf-8", "replace"))


@functools.cache
def death_signal_wrapper() -> tuple[str, ...]:
    """``setpriv --pdeathsig KILL --`` where util-linux's setpriv has the option (2.33 and
    later), else ``()``: then the signal is set between fork and exec."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    try:
        usage = subprocess.run(
            [setpriv, "--help"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return (setpriv, "--pdeathsig", "KILL", "--") if "--pdeathsig" in usage else ()


def _die_with_parent(parent: int) -> None:
    # Runs in the child between fork and exec: only system calls, nothing that may wait
    # on a lock another thread of the worker held when it forked (prctl is resolved).
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:  # the worker died before the signal was armed
        os._exit(1)


def kill_group(pgid: int, signum: int = signal.SIGKILL) -> bool:
    """Sends ``signum`` to the process group ``pgid``; False when no process is left in it."""
    if pgid <= 1:
        return False
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's group by now: leave it alone
    return True


@dataclass(frozen=True)
class _Limit:
    at: float
    """time.monotonic() past which the task is stopped."""
    reason: str
    timed_out: bool


class TaskRunner:
    """Runs one task at a time for a worker (not thread-safe, but for :meth:`cut_short`)."""

    def __init__(
        self,
        command: TaskCommand,
        *,
        time_limit: float,
        logger: logging.Logger,
        worker_id: str,
        kill_grace: float = KILL_GRACE,
        log_limit: int = LOG_LIMIT,
        tail_limit: int = TAIL_LIMIT,
        wrapper: tuple[str, ...] | None = None,
        secrets: Callable[[], Sequence[str]] = tuple,
        adopt_orphans: bool = False,
    ) -> None:
        """``wrapper``: what is exec'd in front of the command to arm its death signal
        (default: :func:`death_signal_wrapper`; ``()``: armed between fork and exec).
        ``secrets``: the values masked in what the task writes (the passwords in force).
        ``adopt_orphans`` (a worker's): this process becomes the child subreaper of its
        tasks' trees, so that what a task leaves running outside its group — a daemon in
        a session of its own, its environment reset — is re-parented to it; such orphans
        are reaped as they end, after each task, and :meth:`end_orphans` ends those still
        running."""
        self.command = command
        self.time_limit = time_limit
        self.logger = logger
        self.kill_grace = kill_grace
        self.log_limit = log_limit
        self.tail_limit = tail_limit
        self._environment = {
            **os.environ,
            **TASK_ENVIRONMENT,
            # Symfony's Process runs the task through /bin/sh ('exec tuleap …'), and the
            # shell sets PWD to the directory it starts in, as the kernel names it.
            "PWD": os.path.realpath(command.directory),
            WORKER_MARKER: worker_id,
        }
        parent_death_signal_available()  # resolved here, not in the child after fork
        self._wrapper = death_signal_wrapper() if wrapper is None else wrapper
        self._secrets = secrets
        self.adopts = adopt_orphans and become_child_subreaper()
        """Whether this process is the child subreaper of its tasks' trees."""
        self._lock = threading.Lock()
        self._limit: _Limit | None = None
        """The running task's deadline (None when no task runs)."""
        self._cut: _Limit | None = None
        """The deadline cut_short set, for every task from then on."""

    def cut_short(self, seconds: float, reason: str) -> None:
        """Lets the running task, and any started after, run at most ``seconds`` more
        from now; safe from any thread. Used when the pool is gone: its grace period, then
        the task is killed."""
        with self._lock:
            cut = _Limit(time.monotonic() + seconds, reason, timed_out=False)
            self._cut = cut if self._cut is None or cut.at < self._cut.at else self._cut
            if self._limit is not None and cut.at < self._limit.at:
                self._limit = cut

    def run(self, raw: bytes, on_start: Callable[[int], None] = lambda pid: None) -> TaskOutcome:
        """Runs the task for one message (``raw`` on its stdin) to its end; ``on_start``
        gets its pid (which is also its process group) as soon as it runs. Raises
        TaskStartError when it cannot be started at all."""
        started = time.monotonic()
        preexec = None if self._wrapper else functools.partial(_die_with_parent, os.getpid())
        try:
            process = subprocess.Popen(
                (*self._wrapper, *self.command.argv),
                cwd=self.command.directory,
                env=self._environment,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                process_group=0,
                preexec_fn=preexec,
                close_fds=True,
            )
        except OSError as error:
            raise TaskStartError(
                f"cannot start {shlex.join(self.command.argv)}: {error.strerror or error}"
            ) from None
        on_start(process.pid)
        with self._lock:
            self._limit = _Limit(
                started + self.time_limit,
                f"it ran past the time limit of {self.time_limit:g} s",
                timed_out=True,
            )
            if self._cut is not None and self._cut.at < self._limit.at:
                self._limit = self._cut
        output = _Output(self.logger, self.log_limit, self.tail_limit, self._secrets())
        killed: _Limit | None = None
        try:
            killed = self._communicate(process, raw, output)
        finally:
            with self._lock:
                self._limit = None
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
            if process.returncode is None:  # only when _communicate itself failed
                kill_group(process.pid)
                process.wait()
            self._stop_leftovers(process.pid, quietly=killed is not None)
            if self.adopts:
                self._reap_orphans()
            output.close()
        return TaskOutcome(
            returncode=int(process.returncode),
            seconds=time.monotonic() - started,
            stderr_tail=output.stderr_tail,
            output_bytes=output.total,
            killed_because=killed.reason if killed else "",
            timed_out=killed.timed_out if killed else False,
        )

    def _communicate(
        self, process: subprocess.Popen[bytes], raw: bytes, output: _Output
    ) -> _Limit | None:
        """Feeds stdin, relays the output, enforces the deadline; returns the limit the
        task was killed for (None when it ended on its own)."""
        assert process.stdin and process.stdout and process.stderr
        selector = selectors.DefaultSelector()
        streams = {process.stdout.fileno(): "stdout", process.stderr.fileno(): "stderr"}
        for fd in streams:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        stdin = process.stdin.fileno()
        os.set_blocking(stdin, False)
        pending = memoryview(raw)
        if pending:
            selector.register(stdin, selectors.EVENT_WRITE)
        else:
            process.stdin.close()
            stdin = -1  # its number is free now: the pidfd below may well get it
        exit_fd = _pidfd(process.pid)
        if exit_fd is not None:
            selector.register(exit_fd, selectors.EVENT_READ)
        killed: _Limit | None = None
        kill_at = 0.0  # when the SIGKILL follows the SIGTERM (0: none sent; inf: sent)
        try:
            while process.poll() is None:
                now = time.monotonic()
                with self._lock:
                    limit = self._limit
                deadline = limit.at if limit is not None else math.inf
                if limit is not None and not kill_at and now >= deadline:
                    killed, kill_at = limit, now + self.kill_grace
                    self.logger.error("Task stopped: %s; stopping its process group", limit.reason)
                    kill_group(process.pid, signal.SIGTERM)
                elif now >= kill_at > 0:
                    kill_group(process.pid, signal.SIGKILL)
                    kill_at = math.inf
                next_step = kill_at if kill_at else deadline
                for key, _ in selector.select(min(_POLL, max(next_step - now, 0.0))):
                    fd = int(key.fd)
                    if fd == stdin:
                        pending = self._feed(selector, process, pending)
                        if not pending:
                            stdin = -1  # closed: its number may come back for another
                    elif fd in streams:
                        self._read(selector, fd, streams[fd], output)
            # Ended: what is already in the pipes is its output; a process it left behind
            # may hold them open, so read what is there without waiting for their end.
            for fd, stream in streams.items():
                with contextlib.suppress(KeyError, ValueError):
                    selector.get_key(fd)
                    while self._read(selector, fd, stream, output):
                        pass
        finally:
            selector.close()
            if exit_fd is not None:
                os.close(exit_fd)
        return killed

    def _feed(
        self,
        selector: selectors.BaseSelector,
        process: subprocess.Popen[bytes],
        pending: memoryview,
    ) -> memoryview:
        assert process.stdin is not None
        try:
            written = os.write(process.stdin.fileno(), pending[:_READ_SIZE])
        except BlockingIOError:
            return pending
        except OSError:  # EPIPE: the task does not read all of it; its business
            written = len(pending)
        pending = pending[written:]
        if not pending:
            selector.unregister(process.stdin.fileno())
            process.stdin.close()
        return pending

    def _read(
        self, selector: selectors.BaseSelector, fd: int, stream: str, output: _Output
    ) -> bool:
        """Reads once from ``fd``; False at its end or when nothing is there now."""
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            selector.unregister(fd)
            return False
        output.add(stream, data)
        return True

    def _stop_leftovers(self, pgid: int, *, quietly: bool) -> None:
        """Stops what the task left running in its group (it is over: they are orphans);
        ``quietly`` after a kill, where the group's last processes are merely slower to go."""
        _reap_group(pgid)
        if not kill_group(pgid, 0):
            return
        if not quietly:
            self.logger.warning("The task left process(es) running in its group; stopping them")
        kill_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + LEFTOVER_WAIT
        while time.monotonic() < deadline and kill_group(pgid, 0):
            time.sleep(0.01)
            _reap_group(pgid)
        kill_group(pgid, signal.SIGKILL)

    def _reap_orphans(self) -> None:
        """Waits for the adopted orphans that ended (a subreaper's zombies otherwise): the
        children outside this process's own group. A task and all it starts run in groups
        of their own; what a handler starts stays in the worker's, its own to wait for."""
        own_group = os.getpgrp()
        for pid in child_pids():
            with contextlib.suppress(OSError):  # ended and reaped meanwhile
                if os.getpgid(pid) != own_group:
                    os.waitpid(pid, os.WNOHANG)

    def end_orphans(self) -> None:
        """Ends every child this process has left (SIGTERM, then SIGKILL), with all they
        started, and logs what it ended: called as the worker exits, when what its tasks
        left running — a daemon such as ``git gc --auto`` starts — is an orphan for good.
        Does nothing unless it adopts orphans."""
        if not self.adopts:
            return
        ended = end_adopted(psutil.Process())
        if ended:
            self.logger.warning(
                "Stopped %d process(es) its tasks left running: %s", len(ended), ", ".join(ended)
            )


def task_handler(runner: TaskRunner) -> Handler:
    """The handler that runs a message through ``runner`` (the registry's fallback): done
    on exit status 0; else retried (then dead-lettered) with the task's stderr tail."""

    def run_task(payload: Any, job: Job) -> None:
        try:
            outcome = runner.run(job.raw, job.child_started)
        except TaskStartError as error:
            raise RetryLater(str(error)) from None
        finally:
            job.child_started(0)
        if outcome.ok:
            return
        last_line = outcome.last_line()
        reason = outcome.describe() + (f": {last_line}" if last_line else "")
        raise RetryLater(
            reason,
            detail=outcome.stderr_tail,
            outcome=Outcome.TIMEDOUT if outcome.timed_out else Outcome.FAILED,
        )

    return run_task


def _reap_group(pgid: int) -> None:
    """Waits for this process's children in the group ``pgid`` that ended: a task's
    orphans re-parented to its worker (a child subreaper) are zombies until then, and a
    zombie still counts as a member of the group."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-pgid, os.WNOHANG)[0]:
            pass


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` exits (Linux ≥ 5.3), else None
    (the loop then looks every ``_POLL`` seconds)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def sweep_leftovers(worker_ids_alive: Callable[[str], bool], logger: logging.Logger) -> int:
    """Kills the task processes on this host whose worker is gone (``TUITOP_WORKER`` in
    their environment names a worker for which ``worker_ids_alive`` says False): what the
    tasks of a pool killed whole left behind. Returns how many were killed."""
    killed = 0
    me = os.getuid()
    for process in psutil.process_iter(["uids"]):
        try:
            if process.info["uids"] is None or process.info["uids"].real != me:
                continue
            worker_id = process.environ().get(WORKER_MARKER)
            if not worker_id or worker_ids_alive(worker_id):
                continue
            process.kill()
            killed += 1
        except psutil.Error:
            continue
    if killed:
        logger.warning("Killed %d task process(es) left by workers that are gone", killed)
    return killed


def end_adopted(adopter: psutil.Process, spare: Collection[int] = ()) -> list[str]:
    """Ends what the child subreaper ``adopter`` adopted: its children but the ``spare``
    pids, each with everything it started — SIGTERM, up to ``LEFTOVER_WAIT`` s for them to
    go, then SIGKILL — and again what their ends re-parented to it, up to
    ``ADOPTED_ROUNDS`` times. A process of another user refuses the signal and is left
    alone. When ``adopter`` is this process, its children that ended are reaped. Returns
    what it signalled, each as ``name (pid N)``."""
    ended: dict[int, str] = {}
    mine = adopter.pid == os.getpid()
    children: list[psutil.Process] = []
    for _ in range(ADOPTED_ROUNDS):
        try:
            children = [child for child in adopter.children() if child.pid not in spare]
        except psutil.Error:  # the adopter is gone
            break
        if mine:
            _reap(children)
        tree = list(children)
        for child in children:
            with contextlib.suppress(psutil.Error):
                tree.extend(child.children(recursive=True))
        running = {process: _describe(process) for process in tree if _running(process)}
        signalled = [process for process in running if _signal(process, signal.SIGTERM)]
        if not signalled:
            break  # all ended, or another user's
        ended.update((process.pid, running[process]) for process in signalled)
        for process in _still_running(signalled, LEFTOVER_WAIT):
            _signal(process, signal.SIGKILL)
    if mine:
        _reap(children)
    return list(ended.values())


def _still_running(processes: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    """Those of ``processes`` still running after up to ``seconds`` (a zombie has ended)."""
    deadline = time.monotonic() + seconds
    while True:
        processes = [process for process in processes if _running(process)]
        if not processes or time.monotonic() >= deadline:
            return processes
        time.sleep(0.01)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(process: psutil.Process, signum: int) -> bool:
    """Sends ``signum``; False when the process is gone or refuses it (another user's)."""
    try:
        process.send_signal(signum)
    except psutil.Error:
        return False
    return True


def _describe(process: psutil.Process) -> str:
    try:
        return f"{process.name()} (pid {process.pid})"
    except psutil.Error:
        return f"pid {process.pid}"


def _reap(children: Sequence[psutil.Process]) -> None:
    """Waits for those of this process's ``children`` that ended (no wait for the rest)."""
    for child in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child.pid, os.WNOHANG)
