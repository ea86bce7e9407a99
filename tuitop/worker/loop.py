"""One worker process: takes messages, runs their handlers, acks (:class:`Worker`, its
main thread; :func:`worker_main`, the process's entry point).

The loop (Tuleap's worker, made faster and safer), on either queue through its channel
(:mod:`tuitop.backends`: Redis, or Tuleap's database):

* take a batch when the queue is deep, sized so that a batch is ~20 ms of work, else wait
  for one message without polling — Redis: a BLMOVE; the database: the pool's doorbell;
* run each message's handler; ack the finished ones together with the stats in one
  round trip. When a job runs long, a watchdog (:mod:`.watchdog`) gives the rest of its
  batch back to the queue while it runs, so no message waits behind it while another
  worker is idle;
* exit after ``max_messages`` (Tuleap: 1000) so a fresh process replaces it.

A worker's id is ``pool/slot#pid``: unique to the process, so what it holds is its own
even when an old process of the same slot outlives its supervisor.

SIGTERM asks for a warm stop: the job running finishes, messages taken but not started go
back to the head of the queue, then the worker leaves; when idle it leaves at once.
SIGINT is ignored: a Ctrl-C at the terminal is the supervisor's to handle. A heartbeat
thread (:mod:`.heartbeat`) turns every second until the process ends; what it and the
loop share with the supervisor is the worker's status (:mod:`.status`).
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from types import FrameType
from typing import Any, TextIO

import psutil
from setproctitle import setproctitle

from tuitop.backends import worker_channel
from tuitop.backends.base import NOT_RETRIED_PAST_LIMIT, ErrorTypes, WorkerChannel
from tuitop.backends.errors import CredentialsRefused, StoreError
from tuitop.beats import WorkerBeat
from tuitop.handlers import (
    HandlerRegistry,
    Job,
    PayloadError,
    PermanentFailure,
    RetryLater,
)
from tuitop.lanes import DEFAULT_LANE, latency_target
from tuitop.log import LevelSource, setup_logging, sync_level
from tuitop.mail import MailTransport, transport_for
from tuitop.message import Message, job_key, php_json
from tuitop.metrics import Counting, open_counting
from tuitop.notification import NOTIFICATION_TOPICS
from tuitop.notification import TOPIC as NOTIFICATION_TOPIC
from tuitop.osutil import ProcessTree, set_parent_death_signal
from tuitop.outcome import Outcome
from tuitop.registry import build_registry
from tuitop.stats import END_TO_END, MAX_TOPIC_LENGTH, WAIT, StatsBatch
from tuitop.tasks import TaskRunner, task_handler
from tuitop.worker.heartbeat import Heartbeat
from tuitop.worker.options import WorkerOptions, worker_id_of
from tuitop.worker.status import WorkerExit, WorkerState, WorkerStatus
from tuitop.worker.watchdog import GIVE_BACK_AFTER, NO_STATS, BatchGuard

MAX_TOPICS_REMEMBERED = 1000
"""Topics whose lane a worker remembers (a hostile producer may send endless new ones)."""
LOGGED_MESSAGE = 4096
"""Bytes of a message written on its "Got message" line."""
BATCH_BUDGET = 0.020
"""Seconds of work a batch is sized for, from the recent job durations."""
ACK_AT_ONCE_AFTER = 0.002
"""A job longer than this is acked at once: the round trip is then a small price."""
STATS_EVERY = 1.0
"""Seconds between two writes of a worker's stats: with an ack, or, for a worker that went
idle with stats unwritten, when its wait ends at that time."""
VAIN_WAITS_PER_TAKE = 10
"""An idle worker of the default lane takes once every this many empty waits (5 min)."""
STATS_MIN_WAIT = 0.01
"""The shortest wait of an idle worker whose stats are due (a wait of 0 blocks forever)."""
STORE_BACKOFF_MAX = 10.0


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
    options: WorkerOptions, status: WorkerStatus, level: LevelSource, bell: Any = None
) -> None:
    """Entry point of the worker process; ``status`` is the one its pool made (over the
    same shared memory), ``bell`` the read end of the pool's doorbell (the database
    queue: a byte on it means "look again")."""
    worker = Worker(options, status, level, bell)
    try:
        code = worker.run()
    except Exception:
        # The log file is where an operator looks; a traceback on stderr alone is lost.
        worker.logger.exception("Worker %s crashed", worker.id)
        code = WorkerExit.CRASH
    sys.exit(int(code))


class Worker:
    def __init__(
        self, options: WorkerOptions, status: WorkerStatus, level: LevelSource, bell: Any = None
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
        self._job_failed = False
        """Whether the job running (or the last one) failed: it went through ``_fail``."""
        self._vain_waits = 0
        """Waits in a row that timed out with nothing, each from all it serves (``_wait``)."""
        self._stats_at = time.monotonic()
        self.metrics: Counting = Counting()
        # Pessimistic until measured: the first batch is a single message.
        self._job_time = BATCH_BUDGET
        self._topic = ""
        self.batch = BatchGuard()
        # The name, not __name__ (tuitop.worker.loop): tests and log filters use it.
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
        """When its own heartbeat last got through (the pool's: ``status.listed_at``)."""
        self.lost = ""
        """Why this worker knows its list was recovered by someone else ('' while not)."""
        self._traceback_dump: TextIO | None = None

    # --- life cycle ------------------------------------------------------------------------

    def run(self) -> WorkerExit:
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
        self.status.enter(WorkerState.STARTING)
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
            return WorkerExit.HANDLERS
        self.mail: MailTransport = transport_for(settings.mail, self.options.sendmail)
        self.connect()
        try:
            self.channel.start(self.id)
            self.beat(self.channel)
        except StoreError as error:
            self.logger.error(str(error))
            if isinstance(error, CredentialsRefused):
                return WorkerExit.STORE_AUTH
            return WorkerExit.STORE_UNREACHABLE
        self.logger.info("Start service (worker %s)", self.id)
        heartbeat = Heartbeat(self)
        heartbeat.start()
        try:
            self._loop()
        finally:
            if self.tasks is not None:
                self.tasks.end_orphans()  # what its tasks left would outlive it
            self._finish()
            heartbeat.stop()
            self.mail.close()
        return WorkerExit.OK

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
        self._not_the_jobs: ErrorTypes = (_Interrupted, KeyboardInterrupt, StoreError)

    def _finish(self) -> None:
        self.status.enter(WorkerState.STOPPING)
        try:
            if self.stop_requested:
                # A signal may have cut a blocking read short: start from fresh connections
                # (not after its last message: a new connection is a round trip or two
                # more before its successor can start).
                self.channel.reset()
            self._settle()
            self.channel.leave(self.id)
        except StoreError as error:
            self.logger.warning(
                "Worker %s could not clean up (%s); its supervisor will recover its messages",
                self.id,
                str(error),
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
            if self.status.processed >= self.options.max_messages:
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
                    self.status.ask_rebeat()
                    self._settle()
                batch, source = self._next_batch()
                if batch:
                    self._run_batch(batch, source)
            except _Interrupted:
                return
            except StoreError as error:
                backoff = min(max(backoff * 2, 0.1), STORE_BACKOFF_MAX)
                self.logger.warning(
                    "Worker %s: %s; retrying in %.1f s",
                    self.id,
                    str(error),
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
        left = self.options.max_messages - self.status.processed
        size = max(1, min(self.options.max_batch, int(BATCH_BUDGET / self._job_time), left))
        # The last batch's acks (and its stats, when due) go with this take: one round trip.
        stats = self._stats_due()
        wrote = bool(stats.fields)  # the store's write empties it
        try:
            all_there, taken = self.channel.ack_and_take(self.id, self._pending_acks, stats, size)
        except StoreError:
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
        if not self.status.idle:
            self.status.enter(WorkerState.IDLE)
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
        status = self.status
        status.job_began(now, job_key(message), time.monotonic())  # and busy
        if self.logger.isEnabledFor(logging.INFO):
            shown = message.raw[:LOGGED_MESSAGE].decode("utf-8", "replace")
            self.logger.info("Got message: %s", shown)
        self._job_failed = False
        self.metrics.started(message, now)
        done = False
        try:
            done = self._run_handler(message, now)
        finally:
            self.metrics.ended(message, time.time())
            status.job_ended()
            if self.logger.isEnabledFor(logging.INFO):
                # Tuleap's line: the time since the message was enqueued, not the job's.
                age = message.age()
                self.logger.info(
                    "Message processed%s [%d/%d]",
                    "" if age is None else f" in {age:.3f} seconds",
                    status.processed,
                    self.options.max_messages,
                )
        # Not reached when the job was cut off (a cold stop): it did not finish.
        self._count(message, now, done, failed=self._job_failed)

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
                stats.outcome(Outcome.DONE)
                stats.outcome(Outcome.DONE, lane=lane)
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
            self.status.count_done()
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
        self.status.task_pid = pid

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
        self.status.count_failed()
        self._job_failed = True
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
            Outcome.RETRIED: (logging.WARNING, "will be retried"),
            Outcome.DEAD: (logging.ERROR, "moved to the dead letters"),
            # A supervisor took it over meanwhile (this worker's heartbeat had expired).
            Outcome.GONE: (logging.WARNING, "was already recovered by a supervisor"),
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
            if result is Outcome.RETRIED:
                self.status.count_retried()
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
        """The stats to write now (``NO_STATS`` before ``STATS_EVERY`` passed, unless
        ``force``). No job runs: the watchdog takes none meanwhile."""
        counted = self.batch.stats
        due = force or time.monotonic() - self._stats_at >= STATS_EVERY
        return counted if counted.fields and due else NO_STATS

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
            heard = max(heard, self.status.listed_at)
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
        state = status.state
        return WorkerBeat(
            host=socket.gethostname(),
            pid=os.getpid(),
            pool=self.options.pool,
            slot=self.options.slot,
            lane=self.options.lane,
            serves=self.options.serves,
            task_pid=status.task_pid,
            state=state.label,
            since=status.since,
            job_started=status.job_started,
            topic=self._topic if state is WorkerState.BUSY else "",
            done=status.done,
            failed=status.failed,
            processed=status.processed,
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
