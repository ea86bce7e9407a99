"""One worker process: takes messages, runs their handlers, acks, beats.

The loop (Tuleap's worker, made faster and safer), on either queue through its channel
(:mod:`tuitop.backends`: Redis, or Tuleap's database):

* take a batch when the queue is deep, sized so that a batch is ~20 ms of work, else wait
  for one message without polling — Redis: a BLMOVE; the database: the pool's doorbell;
* run each message's handler; ack the finished ones together with the stats in one
  round trip. When a job runs long, a watchdog gives the rest of its batch back to the
  queue while it runs, so no message waits behind it while another worker is idle;
* exit after ``max_messages`` (Tuleap: 1000) so a fresh process replaces it.

A worker's id is ``pool/slot#pid``: unique to the process, so what it holds is its own
even when an old process of the same slot outlives its supervisor.

SIGTERM asks for a warm stop: the job running finishes, messages taken but not started go
back to the head of the queue, then the worker leaves; when idle it leaves at once.
SIGINT is ignored: a Ctrl-C at the terminal is the supervisor's to handle. A heartbeat
thread turns every second until the process ends: it stamps the shared memory the local
supervisor reads (which lists the worker as alive in the pool's own heartbeat, and
enforces the job time limit), writes the worker's hash in the store when it changed
(an idle worker's does not: an idle pool costs the store the same whatever its number
of workers), and starts a warm stop when the supervisor is gone (from then on it beats on
its own, as no pool lists it any more).
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol, TextIO

import psutil
from setproctitle import setproctitle

from tuitop.backends import worker_channel
from tuitop.backends.base import NOT_RETRIED_PAST_LIMIT, ErrorTypes, RetryPolicy, WorkerChannel
from tuitop.backends.redis import keys
from tuitop.backends.redis.connection import CONNECT_TIMEOUT
from tuitop.beats import WorkerBeat
from tuitop.config import Settings
from tuitop.handlers import (
    HandlerRegistry,
    Job,
    PayloadError,
    PermanentFailure,
    RetryLater,
)
from tuitop.lanes import DEFAULT_LANE, latency_target
from tuitop.log import LevelSource, reopen_log_files, setup_logging, sync_level
from tuitop.mail import DEFAULT_SENDMAIL, MailTransport, transport_for
from tuitop.message import Message, job_key, php_json
from tuitop.metrics import Counting, CountingTarget, open_counting
from tuitop.notification import NOTIFICATION_TOPICS
from tuitop.notification import TOPIC as NOTIFICATION_TOPIC
from tuitop.osutil import ProcessTree, process_running, set_parent_death_signal
from tuitop.outcome import Outcome
from tuitop.registry import build_registry
from tuitop.stats import END_TO_END, MAX_TOPIC_LENGTH, WAIT, StatsBatch
from tuitop.tasks import TaskCommand, TaskRunner, task_handler

# Exit codes the supervisor reads to say why a worker could not start.
EXIT_OK = 0
EXIT_CRASH = 1
EXIT_STORE_AUTH = 3
"""The queue's server (Redis, the database) refused the credentials."""
EXIT_STORE_UNREACHABLE = 4
EXIT_HANDLERS = 5

# Shared status slots (a multiprocessing Array of doubles). JOB_STARTED is wall time, for
# display; JOB_CLOCK is CLOCK_MONOTONIC (system-wide on Linux), for the time limit, so a
# step of the wall clock never kills a job. TASK_PID is the running task process (its
# process group too), which the pool kills if the worker dies.
# ALIVE: CLOCK_MONOTONIC of the heartbeat thread's last turn (the pool lists the worker
# as alive in its own hash while it is recent); LISTED: of the pool's last heartbeat that
# got through listing it (set by the pool), or the ALIVE that listing stood on if older
# (a listing vouches for a TTL after the worker's own last turn, no more); REBEAT: set
# by the pool when the store came back (it may have lost the worker's hash), or by the
# worker itself, cleared by the worker once it wrote it again.
(STATE, SINCE, JOB_STARTED, DONE, FAILED, PROCESSED, JOB_CLOCK, TASK_PID) = range(8)
# RETRIED: how many messages it scheduled for a retry (the pool reads when the next retry
# is due again when the sum changes, not only with its heartbeat). JOB_MESSAGE: the
# key of the message its job runs (message.job_key), 0 between jobs: the one
# the pool gives up when it kills the worker at the time limit.
ALIVE, LISTED, REBEAT, RETRIED, JOB_MESSAGE = range(8, 13)
STATUS_SLOTS = 13
STARTING, IDLE, BUSY, STOPPING = 0.0, 1.0, 2.0, 3.0
STATE_NAMES = {STARTING: "starting", IDLE: "idle", BUSY: "busy", STOPPING: "stopping"}

MAX_TOPICS_REMEMBERED = 1000
"""Topics whose lane a worker remembers (a hostile producer may send endless new ones)."""
LOGGED_MESSAGE = 4096
"""Bytes of a message written on its "Got message" line."""
BATCH_BUDGET = 0.020
"""Seconds of work a batch is sized for, from the recent job durations."""
ACK_AT_ONCE_AFTER = 0.002
"""A job longer than this is acked at once: the round trip is then a small price."""
HEARTBEAT_SOCKET_TIMEOUT = 2.0
ACK_WAIT = CONNECT_TIMEOUT + 3 * HEARTBEAT_SOCKET_TIMEOUT
"""The longest a job's end waits for the watchdog's ack under way (a connect and its
replies: the ack has failed by then; one still under way stays the worker's)."""
STATS_EVERY = 1.0
"""Seconds between two writes of a worker's stats: with an ack, or, for a worker that went
idle with stats unwritten, when its wait ends at that time."""
VAIN_WAITS_PER_TAKE = 10
"""An idle worker of the default lane takes once every this many empty waits (5 min)."""
STATS_MIN_WAIT = 0.01
"""The shortest wait of an idle worker whose stats are due (a wait of 0 blocks forever)."""
_NONE = StatsBatch()
"""No stats (never added to)."""
GIVE_BACK_AFTER = 0.050
"""A job running longer than this has the rest of its batch given back to the queue."""
STORE_BACKOFF_MAX = 10.0


def worker_id_of(slot_name: str, pid: int) -> str:
    """The id of the process ``pid`` running in slot ``pool/slot``."""
    return f"{slot_name}#{pid}"


class StatusArray(Protocol):
    def __getitem__(self, index: int) -> float: ...

    def __setitem__(self, index: int, value: float) -> None: ...


@dataclass(frozen=True)
class WorkerOptions:
    """What a worker process needs to run; picklable (it crosses into the new process)."""

    slot_name: str
    """``pool/slot``; the worker's id adds its pid (:func:`worker_id_of`)."""
    pool: str
    slot: int
    settings: Settings
    supervisor_pid: int
    supervisor_started: float | None = None
    """The supervisor's process creation time, to tell it from a process reusing its pid."""
    log_file: str | None = None
    log_to_stderr: bool = False
    max_messages: int = 1000
    max_batch: int = 32
    block_timeout: float = 30.0
    """Seconds a BLMOVE waits; a stop request cuts it short, so it only bounds idle traffic
    (and how long a connection cut without a word takes to be noticed: 10 s more)."""
    heartbeat_interval: float = 1.0
    heartbeat_ttl: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    handler_modules: tuple[str, ...] = ()
    sendmail: str = DEFAULT_SENDMAIL
    task: TaskCommand | None = None
    """Tuleap's task process, for the messages no handler takes (None: they are refused)."""
    job_timeout: float = 15 * 60.0
    """A task running longer is killed by the worker (the pool kills a worker whose
    in-process handler runs longer)."""
    grace_period: float = 30.0
    """How long a task may go on once the pool is gone, before it is killed."""
    lane: str = DEFAULT_LANE
    """The lane this worker is for (:mod:`tuitop.lanes`)."""
    serves: tuple[str, ...] = (DEFAULT_LANE,)
    """The lanes it takes from, in order (its own first)."""
    traceback_file: str | None = None
    """Where it writes every thread's stack when it gets SIGUSR1 (``faulthandler``): the
    pool asks for it before it kills a job past its time limit."""
    counting: CountingTarget | None = None
    """Where it counts what it runs for the pool's metrics (None: the pool serves none)."""
    help_interval: float = 1.0
    """The first blocking wait of a worker serving several lanes: it blocks on Tuleap's
    list, where every message arrives, and looks at its other lanes' lists between jobs and
    this often when it just worked; idle, the wait doubles up to a thirtieth of its lane's
    latency target (``latency_15m``: 30 s), ``block_timeout`` at most (a message another
    worker moved to its lane starts that soon)."""


@dataclass(frozen=True)
class _Failure:
    """A failed message whose move out of the processing list is still to be written."""

    message: Message
    reason: str
    retryable: bool
    payload: Any
    """What to retry instead of the message's payload (None: the message as it is)."""
    trace: str
    outcome: Outcome


class _Interrupted(Exception):
    """Raised by the signal handler to leave a blocking wait for a message."""


def worker_main(
    options: WorkerOptions, status: StatusArray, level: LevelSource, bell: Any = None
) -> None:
    """Entry point of the worker process; ``bell`` is the read end of the pool's doorbell
    (the database queue: a byte on it means "look again")."""
    worker = Worker(options, status, level, bell)
    try:
        code = worker.run()
    except Exception:
        # The log file is where an operator looks; a traceback on stderr alone is lost.
        worker.logger.exception("Worker %s crashed", worker.id)
        code = EXIT_CRASH
    sys.exit(code)


class Worker:
    def __init__(
        self, options: WorkerOptions, status: StatusArray, level: LevelSource, bell: Any = None
    ) -> None:
        self.options = options
        self.bell = bell
        self.id = worker_id_of(options.slot_name, os.getpid())
        self.status = status
        self.level = level
        self.stop_requested = False
        self.stop_reason = ""
        self._blocking = False
        self._pending_acks: list[Message] = []
        self._pending_failures: list[_Failure] = []
        self._acks_unsure = False
        """The pending acks went with a take that failed: they may have been made."""
        self._vain_waits = 0
        """Waits in a row that timed out with nothing, each from all it serves (``_wait``)."""
        self._stats_at = time.monotonic()
        self.metrics: Counting = Counting()
        # Pessimistic until measured: the first batch is a single message.
        self._job_time = BATCH_BUDGET
        self._topic = ""
        self.batch = _BatchGuard()
        self.logger = logging.getLogger("tuitop.worker")
        self.tasks: TaskRunner | None = None
        self._lanes: dict[str, str] = {}
        self._help_wait = options.help_interval
        target = latency_target(options.lane)
        self._help_wait_max = min(
            options.block_timeout,
            max(options.help_interval, target / 30 if target is not None else 8.0),
        )
        self.last_beat = time.monotonic()
        """When its own heartbeat last got through (the pool's: ``status[LISTED]``)."""
        self.lost = ""
        """Why this worker knows its list was recovered by someone else ('' while not)."""
        self._traceback_dump: TextIO | None = None

    # --- life cycle ------------------------------------------------------------------------

    def run(self) -> int:
        setproctitle(f"tuitop: worker {self.options.slot_name}")
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        set_parent_death_signal(signal.SIGTERM)
        self._arm_traceback_dump()
        settings = self.options.settings
        self.logger = setup_logging(
            log_file=self.options.log_file,
            to_stderr=self.options.log_to_stderr,
            level=self.level,
            secrets=settings.secrets,
        )
        self._set_state(STARTING)
        self.metrics = open_counting(self.options.counting)
        if self.options.task is not None:
            self.tasks = TaskRunner(
                self.options.task,
                time_limit=self.options.job_timeout,
                logger=self.logger,
                worker_id=self.id,
                secrets=settings.secrets,
                adopt_orphans=True,
            )
        try:
            self.registry: HandlerRegistry = build_registry(
                self.options.handler_modules,
                fallback=task_handler(self.tasks) if self.tasks is not None else None,
            )
        except Exception as error:
            self.logger.error("Worker %s cannot load its handlers: %s", self.id, error)
            return EXIT_HANDLERS
        self.mail: MailTransport = transport_for(settings.mail, self.options.sendmail)
        self.connect()
        try:
            self.channel.start(self.id)
            self.beat(self.channel)
        except self.errors as error:
            self.logger.error(self.channel.describe(error))
            if self.channel.is_auth_error(error):
                return EXIT_STORE_AUTH
            return EXIT_STORE_UNREACHABLE
        self.logger.info("Start service (worker %s)", self.id)
        heartbeat = _Heartbeat(self)
        heartbeat.start()
        try:
            self._loop()
        finally:
            if self.tasks is not None:
                self.tasks.end_orphans()  # what its tasks left would outlive it
            self._finish()
            heartbeat.stop()
            self.mail.close()
        return EXIT_OK

    def connect(self) -> None:
        """Opens the worker's channel to the queue (nothing is sent yet)."""
        self.channel = worker_channel(
            self.options.settings,
            serves=self.options.serves,
            retry=self.options.retry,
            client_name=f"tuitop:{self.id}",
            socket_timeout=self.options.block_timeout + 10,
            bell=self.bell,
        )
        self.errors = self.channel.errors
        self._not_the_jobs: ErrorTypes = (_Interrupted, KeyboardInterrupt, *self.errors)

    def _finish(self) -> None:
        self._set_state(STOPPING)
        try:
            if self.stop_requested:
                # A signal may have cut a blocking read short: start from fresh connections
                # (not after its last message: a new connection is a round trip or two
                # more before its successor can start).
                self.channel.reset()
            self._settle()
            self.channel.leave(self.id)
        except self.errors as error:
            self.logger.warning(
                "Worker %s could not clean up (%s); its supervisor will recover its messages",
                self.id,
                self.channel.describe(error),
            )
        reason = f" ({self.stop_reason})" if self.stop_reason else ""
        self.logger.info("Stop service (worker %s)%s", self.id, reason)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop("asked to stop")

    def request_stop(self, reason: str) -> None:
        if not self.stop_requested:
            self.stop_requested = True
            self.stop_reason = reason
        if self._blocking:
            self._blocking = False
            raise _Interrupted()

    # --- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        backoff = 0.0
        while not self.stop_requested:
            if self.status[PROCESSED] >= self.options.max_messages:
                self.logger.info("Max messages reached (worker %s)", self.id)
                self.stop_reason = "max messages reached"
                return
            try:
                if backoff:
                    self.channel.ping()
                    self.logger.warning("Worker %s: %s is back", self.id, self._store_name)
                    backoff = 0.0
                    # It may have restarted empty (no persistence), and the pool need not
                    # have noticed: the hash of an idle worker is written again now.
                    self.status[REBEAT] = 1.0
                    self._settle()
                batch, source = self._next_batch()
                if batch:
                    self._run_batch(batch, source)
            except _Interrupted:
                return
            except self.errors as error:
                backoff = min(max(backoff * 2, 0.1), STORE_BACKOFF_MAX)
                self.logger.warning(
                    "Worker %s: %s; retrying in %.1f s",
                    self.id,
                    self.channel.describe(error),
                    backoff,
                )
                self._sleep(backoff)

    @property
    def _store_name(self) -> str:
        return self.options.settings.store.noun

    def _next_batch(self) -> tuple[list[Message], str]:
        """Messages taken (oldest first) and where they came from."""
        if self._vain_waits % VAIN_WAITS_PER_TAKE and not self._pending_acks:
            # Its last wait timed out on the one list it serves: it waits again at once (a
            # take first is 4 commands more each block_timeout, per idle worker). Every
            # VAIN_WAITS_PER_TAKE-th time it takes: the take also finds messages stranded
            # in its list (given back below).
            return self._wait(self.channel.inbox)
        # Never take more than the worker will run before it is recycled.
        left = int(self.options.max_messages - self.status[PROCESSED])
        size = max(1, min(self.options.max_batch, int(BATCH_BUDGET / self._job_time), left))
        # The last batch's acks (and its stats, when due) go with this take: one round trip.
        stats = self._stats_due()
        wrote = bool(stats.fields)  # the store's write empties it
        try:
            all_there, taken = self.channel.ack_and_take(self.id, self._pending_acks, stats, size)
        except self.errors:
            # The acks may have gone (the take failed after them): not a recovery's sign
            # when the next ack finds them gone.
            self._acks_unsure = bool(self._pending_acks)
            raise
        self._acked(all_there, wrote_stats=wrote)
        if taken.messages:
            return taken.messages, taken.source
        held = taken.held
        if held:
            # This worker holds nothing in memory, yet the store says it does: a reply it
            # never got (a timeout after the store did the move). Back, untried.
            self.logger.warning("Worker %s gives back %d stranded message(s)", self.id, held)
            self._give_back_everything()
        return self._wait(taken.source)

    def _wait(self, source: str) -> tuple[list[Message], str]:
        """Waits for work (the channel's wait): what it took, and where from."""
        # Its stats when due, not at once: a worker woken by each message of a trickle
        # would write them once a message, a round trip more than the ack. Its wait ends
        # when they are due.
        self._flush()
        if self.status[STATE] != IDLE:
            self._set_state(IDLE)
            self.logger.debug("Wait for messages")
        timeout = self.options.block_timeout
        if len(self.options.serves) > 1:
            timeout = min(timeout, self._help_wait)
            self._help_wait = min(self._help_wait * 2, self._help_wait_max)
        if self.batch.stats.fields:
            due = STATS_EVERY - (time.monotonic() - self._stats_at)
            timeout = min(timeout, max(due, STATS_MIN_WAIT))
        self._blocking = True
        try:
            if self.stop_requested:
                return [], source
            waited = self.channel.wait(self.id, timeout)
        finally:
            self._blocking = False
        # Only where a wait takes from all the worker serves (Redis' BLMOVE on Tuleap's
        # list, for a worker of the default lane alone): a lane worker's take is its look
        # at its lane; the database's wait takes nothing; a message routed to its lane
        # calls for a take, which routes the rest of a burst in batches.
        in_vain = (
            not waited.messages
            and not waited.routed
            and self.channel.wait_takes
            and self.options.serves == (DEFAULT_LANE,)
        )
        self._vain_waits = self._vain_waits + 1 if in_vain else 0
        return waited.messages, waited.source

    def _run_batch(self, batch: list[Message], source: str) -> None:
        sync_level(self.logger, self.level)  # the supervisor may have changed it
        self._help_wait = self.options.help_interval
        for index, message in enumerate(batch):
            tail = batch[index + 1 :]
            if self._list_lost(len(batch) - index):
                return  # what it holds was recovered: run elsewhere, not here
            if self.stop_requested:
                self._flush()
                self.channel.give_back(self.id, batch[index:], source)
                return
            started = time.monotonic()
            self.batch.arm(tail, started + GIVE_BACK_AFTER, source, list(self._pending_acks))
            try:
                self._process(message)
            except self._not_the_jobs:
                raise  # the loop's to handle (a warm stop, the store away: nothing is lost)
            except Exception as error:
                # tuitop's own fault, not the handler's (that one is caught in _run_handler):
                # the message is charged a try, so that one that keeps crashing is given up
                # instead of taken again and again.
                self.logger.exception("Worker %s failed on a message", self.id)
                self._fail(
                    message,
                    f"tuitop failed on it: {type(error).__name__}: {error}",
                    trace=traceback.format_exc(),
                )
            finally:
                given_back, acked = self.batch.disarm()
                del self._pending_acks[:acked]  # the watchdog acked them
            elapsed = time.monotonic() - started
            self._job_time = 0.8 * self._job_time + 0.2 * max(elapsed, 1e-6)
            if elapsed > ACK_AT_ONCE_AFTER:
                self._flush()
            if given_back:
                return
        # Its acks go with the next take (_next_batch), at once: nothing runs between.

    def _process(self, message: Message) -> None:
        now = time.time()
        # For the heartbeat, rewritten every second and read by every view: cut as the
        # stats cut it (a producer may send a topic of any length).
        self._topic = message.topic[:MAX_TOPIC_LENGTH]
        self.status[JOB_STARTED] = now
        self.status[JOB_MESSAGE] = job_key(message)
        self.status[JOB_CLOCK] = time.monotonic()
        if self.status[STATE] != BUSY:  # through a batch it stays busy
            self._set_state(BUSY)
        if self.logger.isEnabledFor(logging.INFO):
            shown = message.raw[:LOGGED_MESSAGE].decode("utf-8", "replace")
            self.logger.info("Got message: %s", shown)
        failed_before = self.status[FAILED]
        self.metrics.started(message, now)
        done = False
        try:
            done = self._run_handler(message, now)
        finally:
            self.metrics.ended(message, time.time())
            self.status[PROCESSED] += 1
            self.status[JOB_STARTED] = 0.0
            self.status[JOB_CLOCK] = 0.0
            self.status[JOB_MESSAGE] = 0.0
            if self.logger.isEnabledFor(logging.INFO):
                # Tuleap's line: the time since the message was enqueued, not the job's.
                age = message.age()
                self.logger.info(
                    "Message processed%s [%d/%d]",
                    "" if age is None else f" in {age:.3f} seconds",
                    self.status[PROCESSED],
                    self.options.max_messages,
                )
        # Not reached when the job was cut off (a cold stop): it did not finish.
        self._count(message, now, done, failed=self.status[FAILED] != failed_before)

    def _count(self, message: Message, started: float, done: bool, *, failed: bool) -> None:
        """Adds a finished job to the stats, under the guard's lock: the watchdog may take
        them meanwhile (a job that runs long writes what was counted before it)."""
        ended = time.time()
        wait = started - message.enqueue_ts if message.enqueue_ts > 0 else None
        guard = self.batch
        with guard.mutex:
            stats = guard.stats
            if done:
                lane = self._lane_of(message.topic)
                stats.outcome("done")
                stats.outcome("done", lane=lane)
                if wait is not None:
                    stats.latency(WAIT, wait, lane)
                    if message.topic in NOTIFICATION_TOPICS:
                        stats.latency(WAIT, wait)
                        stats.latency(END_TO_END, ended - message.enqueue_ts)
            stats.topic(message.topic, wait=wait, run=ended - started, failed=failed)

    def _run_handler(self, message: Message, started: float) -> bool:
        """Runs the message's job: whether it was done (False: failed, retried or not)."""
        if message.problem is not None:
            self._fail(message, f"unusable message: {message.problem}", retryable=False)
            return False
        handler = self.registry.resolve(message.topic, message.payload)
        if handler is None:
            self._fail(message, self._no_handler(message), retryable=False)
            return False
        job = Job(
            self.options.settings,
            self.logger,
            self.id,
            self.mail,
            message.topic,
            raw=message.raw,
            child_started=self._child_started,
        )
        try:
            handler(message.payload, job)
        except PayloadError as error:
            self._fail(message, f"bad payload for {message.topic}: {error}", retryable=False)
        except PermanentFailure as error:
            self._fail(message, str(error), retryable=False, payload=error.payload)
        except RetryLater as error:
            reason, retryable = str(error), True
            if (
                error.outcome is Outcome.TIMEDOUT
                and not self.options.settings.retries_past_time_limit(message.topic)
            ):
                reason, retryable = reason + NOT_RETRIED_PAST_LIMIT, False
            self._fail(
                message,
                reason,
                retryable=retryable,
                payload=error.payload,
                trace=error.detail,
                outcome=error.outcome,
            )
        except BaseException as error:  # SystemExit from a handler is its failure too
            if isinstance(error, _Interrupted | KeyboardInterrupt):
                raise
            self.logger.error(
                "Worker %s: handler for %s raised %s: %s",
                self.id,
                message.topic,
                type(error).__name__,
                error,
                exc_info=True,
            )
            self._fail(
                message,
                f"{type(error).__name__}: {error}",
                trace=traceback.format_exc(),
            )
        else:
            self._pending_acks.append(message)
            self.status[DONE] += 1
            self.metrics.done(message, time.time())
            return True
        return False

    def _no_handler(self, message: Message) -> str:
        if message.topic == NOTIFICATION_TOPIC:
            return (
                f"{message.topic} without 'mails' is Tuleap's own notification, which only "
                "Tuleap's task process runs (see --task-command)"
            )
        return (
            f"unknown topic {message.topic!r}: no built-in handler, and no --task-command "
            "to run Tuleap's task process"
        )

    def _lane_of(self, topic: str) -> str:
        """The topic's lane, for the stats (remembered: a pool sees few topics)."""
        lane = self._lanes.get(topic)
        if lane is None:
            lane = self.options.settings.lanes.lane_of(topic)
            if len(self._lanes) < MAX_TOPICS_REMEMBERED:
                self._lanes[topic] = lane
        return lane

    def _child_started(self, pid: int) -> None:
        self.status[TASK_PID] = pid

    def _fail(
        self,
        message: Message,
        reason: str,
        *,
        retryable: bool = True,
        payload: Any = None,
        trace: str = "",
        outcome: Outcome = Outcome.FAILED,
    ) -> None:
        self.status[FAILED] += 1
        settings = self.options.settings
        if payload is not None:
            try:
                php_json(payload)  # it must be writable, else the message is retried whole
            except (ValueError, TypeError) as error:
                self.logger.error("Worker %s: the handler's retry payload: %s", self.id, error)
                payload = None
        failure = _Failure(
            message, settings.mask(reason), retryable, payload, settings.mask(trace), outcome
        )
        # Kept until written: if the store fails now, it is written when it is back, never
        # replaced by a plain give-back (that would rerun what the job had already done).
        self._pending_failures.append(failure)
        self._write_failures()

    def _write_failures(self) -> None:
        outcomes = {
            "retried": (logging.WARNING, "will be retried"),
            "dead": (logging.ERROR, "moved to the dead letters"),
            # A supervisor took it over meanwhile (this worker's heartbeat had expired).
            "gone": (logging.WARNING, "was already recovered by a supervisor"),
        }
        while self._pending_failures:
            failure = self._pending_failures[0]
            result = self.channel.fail(
                self.id,
                failure.message,
                failure.reason,
                traceback=failure.trace,
                retryable=failure.retryable,
                payload=failure.payload,
                outcome=failure.outcome,
            )
            self._pending_failures.pop(0)
            if result == "retried":
                self.status[RETRIED] += 1
            self.metrics.failed(failure.message, result, failure.outcome)
            level, what = outcomes[result]
            self.logger.log(
                level, "Message on %s %s: %s", failure.message.topic, what, failure.reason
            )

    def _flush(self, *, stats: bool = False) -> None:
        """Acks the finished messages and adds the stats, in one round trip: the stats
        when ``stats`` says so, or once ``STATS_EVERY`` passed since they last went (a
        busy worker acks a batch every few milliseconds; views read 10 s buckets)."""
        counted = self._stats_due(force=stats)
        if not self._pending_acks and not counted.fields:
            return
        wrote = bool(counted.fields)  # the store's write empties it
        self._acked(self.channel.ack(self.id, self._pending_acks, counted), wrote_stats=wrote)

    def _stats_due(self, *, force: bool = False) -> StatsBatch:
        """The stats to write now (``_NONE`` before ``STATS_EVERY`` passed, unless
        ``force``). No job runs: the watchdog takes none meanwhile."""
        counted = self.batch.stats
        due = force or time.monotonic() - self._stats_at >= STATS_EVERY
        return counted if counted.fields and due else _NONE

    def _acked(self, all_there: bool, *, wrote_stats: bool) -> None:
        """After the pending acks (and stats, when ``wrote_stats``) were written."""
        if not all_there and not self._acks_unsure:
            # Some were no longer in its hands: recovered while this worker was silent.
            self.lost = "its acks found messages no longer in its list"
        self._acks_unsure = False
        if wrote_stats:
            self._stats_at = time.monotonic()
        self._pending_acks.clear()

    def _list_lost(self, held: int) -> bool:
        """Whether this worker's list was recovered by someone else (it was silent past
        its heartbeat: frozen, cut off): then it runs none of the ``held`` messages it
        still has — they are elsewhere now — and stops. Asked of the store only when its last
        beat is older than half the heartbeat's life, or after a sign of it."""
        silent = self.unheard(time.monotonic())
        if not self.lost and silent and not self.channel.leased(self.id):
            self.lost = "its lease is gone"
        if not self.lost:
            return False
        self.logger.error(
            "Worker %s: its messages were recovered by another while it was silent (%s): "
            "it runs none of the %d it held, and stops",
            self.id,
            self.lost,
            held,
        )
        self.stop_requested = True
        self.stop_reason = "its messages were recovered while it was silent"
        return True

    def unheard(self, now: float) -> bool:
        """Whether nothing vouched for this worker in the store for half a heartbeat's
        life (monotonic ``now``): neither its own beat nor, on Redis, its pool's listing
        (the database's rows carry their own expiry, which only its own beat renews)."""
        heard = self.last_beat
        if self.channel.beats_when_changed:
            heard = max(heard, self.status[LISTED])
        return now - heard > self.options.heartbeat_ttl / 2

    def _settle(self) -> None:
        """Writes what is pending (failures, acks), then gives back whatever else the
        processing list holds: with nothing running, that is only messages never started."""
        self._write_failures()
        self._flush(stats=True)
        self._give_back_everything()

    def _give_back_everything(self) -> None:
        leftover = self.channel.held(self.id)
        if leftover:
            self.channel.give_back(self.id, leftover, self.channel.inbox)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop_requested and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))

    def _set_state(self, state: float) -> None:
        self.status[STATE] = state
        self.status[SINCE] = time.time()

    def _arm_traceback_dump(self) -> None:
        """Writes every thread's stack to the pool's file on SIGUSR1: from faulthandler's C
        signal handler, so it comes even while a handler is stuck in C code. Appended:
        the pool empties the file before it asks."""
        if self.options.traceback_file is None:
            return
        try:
            descriptor = os.open(
                self.options.traceback_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
            )
        except OSError as error:
            self.logger.warning("Worker %s: no traceback file: %s", self.id, error)
            return
        self._traceback_dump = os.fdopen(descriptor, "w")
        faulthandler.register(signal.SIGUSR1, file=self._traceback_dump, all_threads=True)

    # --- heartbeat ------------------------------------------------------------------------

    def beat(self, channel: WorkerChannel, process: ProcessTree | None = None) -> None:
        """Publishes this worker's state, says it is alive (for a heartbeat's life) and
        keeps it registered."""
        self.write_beat(channel, self.make_beat(process))

    def make_beat(self, process: ProcessTree | None = None) -> WorkerBeat:
        """This worker's state now (``process``: its CPU and memory are measured)."""
        status = self.status
        cpu = rss = None
        if process is not None:
            with contextlib.suppress(psutil.Error):
                cpu, rss = process.measure()
        return WorkerBeat(
            host=socket.gethostname(),
            pid=os.getpid(),
            pool=self.options.pool,
            slot=self.options.slot,
            lane=self.options.lane,
            serves=self.options.serves,
            task_pid=int(status[TASK_PID]),
            state=STATE_NAMES.get(status[STATE], "unknown"),
            since=status[SINCE],
            job_started=status[JOB_STARTED],
            topic=self._topic if status[STATE] == BUSY else "",
            done=int(status[DONE]),
            failed=int(status[FAILED]),
            processed=int(status[PROCESSED]),
            max_messages=self.options.max_messages,
            cpu=cpu,
            rss=rss,
            beat=time.time(),
        )

    def write_beat(self, channel: WorkerChannel, beat: WorkerBeat) -> None:
        """Writes ``beat`` (see :meth:`beat`)."""
        if not channel.beat(self.id, beat, self.options.heartbeat_ttl):
            self.lost = "its heartbeat found its lease gone"
        self.last_beat = time.monotonic()  # after `lost`: who sees this beat sees that


class _BatchGuard:
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
                return [], self._source, [], _NONE
            tail, acks, self._tail, self._acks = self._tail, self._acks, [], []
            stats = _NONE
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


class _Heartbeat(threading.Thread):
    """Beats every ``heartbeat_interval`` on its channel's companion until the process ends;
    gives back a slow job's batch tail; starts a warm stop when the supervisor is gone;
    lets go of a worker_log logrotate moved."""

    def __init__(self, worker: Worker) -> None:
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
                status[ALIVE] = now
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
                    or status[REBEAT]
                    or now - written_at >= keys.WORKER_HASH_REFRESH
                    or not self._channel.beats_when_changed
                )
                try:
                    if due:
                        rebeat = status[REBEAT]
                        self.worker.write_beat(self._channel, self.worker.make_beat(self._process))
                        written, written_at = state, now
                        if rebeat:
                            status[REBEAT] = 0.0
                    failing = False
                except self._channel.errors as error:
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
        except self._channel.errors as error:
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
        except self._channel.errors as error:
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
