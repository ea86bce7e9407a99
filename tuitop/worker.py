"""One worker process: takes messages, runs their handlers, acks, beats.

The loop (Tuleap's worker, made faster and safer):

* take a batch when the queue is deep — a fair share, sized so that a batch is ~20 ms of
  work (``queue.Queue.take``) — else block on BLMOVE for one message, never polling;
* run each message's handler; ack the finished ones together with the stats in one
  pipelined round trip; a job that turns out slow gives the rest of its batch back, so no
  message waits behind it while another worker is idle;
* exit after ``max_messages`` (Tuleap: 1000) so a fresh process replaces it.

SIGTERM asks for a warm stop: the job running finishes, messages taken but not started go
back to the head of the queue, then the worker leaves; when idle it leaves at once.
SIGINT is ignored: a Ctrl-C at the terminal is the supervisor's to handle. A heartbeat
thread publishes the worker's state in Redis every second, and stops the worker when its
supervisor is gone. The state is also kept in shared memory for the local supervisor, which
enforces the job time limit from it.
"""

from __future__ import annotations

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
from typing import Any, Protocol, cast

import psutil
import redis
from setproctitle import setproctitle

from tuitop import keys
from tuitop.config import Settings
from tuitop.handlers import (
    HandlerRegistry,
    Job,
    PayloadError,
    PermanentFailure,
    RetryLater,
    build_registry,
)
from tuitop.log import LevelSource, setup_logging
from tuitop.mail import DEFAULT_SENDMAIL, MailTransport, transport_for
from tuitop.message import Message, decode, with_payload
from tuitop.osutil import process_running, set_parent_death_signal
from tuitop.queue import Queue, RetryPolicy
from tuitop.redisconn import connect, describe_error, is_auth_error
from tuitop.stats import END_TO_END, WAIT, StatsBatch

# Exit codes the supervisor reads to say why a worker could not start.
EXIT_OK = 0
EXIT_CRASH = 1
EXIT_REDIS_AUTH = 3
EXIT_REDIS_UNREACHABLE = 4
EXIT_HANDLERS = 5

# Shared status slots (a multiprocessing Array of doubles).
STATE, SINCE, JOB_STARTED, DONE, FAILED, PROCESSED = range(6)
STATUS_SLOTS = 6
STARTING, IDLE, BUSY, STOPPING = 0.0, 1.0, 2.0, 3.0
STATE_NAMES = {STARTING: "starting", IDLE: "idle", BUSY: "busy", STOPPING: "stopping"}

BATCH_BUDGET = 0.020
"""Seconds of work a batch is sized for, from the recent job durations."""
ACK_AT_ONCE_AFTER = 0.002
"""A job longer than this is acked at once: the round trip is then a small price."""
GIVE_BACK_AFTER = 0.050
"""A job longer than this gives the rest of its batch back to the queue."""
REDIS_BACKOFF_MAX = 10.0


class StatusArray(Protocol):
    def __getitem__(self, index: int) -> float: ...

    def __setitem__(self, index: int, value: float) -> None: ...


@dataclass(frozen=True)
class WorkerOptions:
    """What a worker process needs to run; picklable (it crosses into the new process)."""

    worker_id: str
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
    block_timeout: float = 5.0
    """Seconds a BLMOVE waits; a stop request cuts it short, so it only bounds idle traffic."""
    heartbeat_interval: float = 1.0
    heartbeat_ttl: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    handler_modules: tuple[str, ...] = ()
    sendmail: str = DEFAULT_SENDMAIL


class _Interrupted(Exception):
    """Raised by the signal handler to leave a blocking wait for a message."""


def worker_main(options: WorkerOptions, status: StatusArray, level: LevelSource) -> None:
    """Entry point of the worker process."""
    sys.exit(Worker(options, status, level).run())


class Worker:
    def __init__(self, options: WorkerOptions, status: StatusArray, level: LevelSource) -> None:
        self.options = options
        self.id = options.worker_id
        self.status = status
        self.level = level
        self.stop_requested = False
        self.stop_reason = ""
        self._blocking = False
        self._pending_acks: list[bytes] = []
        self._stats = StatsBatch()
        self._job_time = 0.001
        self._topic = ""
        self.logger = logging.getLogger("tuitop.worker")

    # --- life cycle ------------------------------------------------------------------------

    def run(self) -> int:
        setproctitle(f"tuitop: worker {self.id}")
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        set_parent_death_signal(signal.SIGTERM)
        settings = self.options.settings
        self.logger = setup_logging(
            log_file=self.options.log_file,
            to_stderr=self.options.log_to_stderr,
            level=self.level,
            secrets=settings.secrets,
        )
        self._set_state(STARTING)
        try:
            self.registry: HandlerRegistry = build_registry(self.options.handler_modules)
        except Exception as error:
            self.logger.error("Worker %s cannot load its handlers: %s", self.id, error)
            return EXIT_HANDLERS
        self.mail: MailTransport = transport_for(settings.mail, self.options.sendmail)
        self.redis = connect(
            settings.redis,
            client_name=f"tuitop:{self.id}",
            socket_timeout=self.options.block_timeout + 10,
        )
        self.queue = Queue(self.redis, self.options.retry)
        try:
            self._register()
        except redis.RedisError as error:
            self.logger.error(describe_error(error, settings.redis))
            return EXIT_REDIS_AUTH if is_auth_error(error) else EXIT_REDIS_UNREACHABLE
        self.logger.info("Start service (worker %s)", self.id)
        heartbeat = _Heartbeat(self)
        heartbeat.start()
        try:
            self._loop()
        finally:
            heartbeat.stop()
            self._finish()
            self.mail.close()
        return EXIT_OK

    def _register(self) -> None:
        self.redis.ping()
        # A previous process in this slot may have left messages (it was killed and no
        # supervisor recovered them yet): Tuleap's worker re-queues them at start too.
        left = self.queue.recover(self.id, f"worker {self.id} restarted", forget_worker=False)
        if left.total:
            self.logger.warning(
                "Worker %s found %d message(s) of a previous run: %d re-queued, %d dead-lettered",
                self.id,
                left.total,
                left.requeued,
                left.dead_lettered,
            )
        self.beat(self.redis)

    def _finish(self) -> None:
        self._set_state(STOPPING)
        try:
            # A signal may have cut a blocking read short: start from fresh connections.
            self.redis.connection_pool.disconnect()
            self._flush()
            leftover = cast(list[bytes], self.redis.lrange(keys.processing_list(self.id), 0, -1))
            if leftover:
                # Only messages never started can be here now: back, try count unchanged.
                self.queue.give_back(self.id, list(reversed(leftover)))
            pipe = self.redis.pipeline(transaction=True)
            pipe.srem(keys.WORKERS, self.id)
            pipe.delete(keys.heartbeat(self.id))
            pipe.execute()
        except redis.RedisError as error:
            self.logger.warning(
                "Worker %s could not clean up (%s); its supervisor will recover its messages",
                self.id,
                describe_error(error, self.options.settings.redis),
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
                batch = self._next_batch()
                if batch:
                    self._run_batch(batch)
                if backoff:
                    self.logger.warning("Worker %s: Redis is back", self.id)
                    backoff = 0.0
                    self._resync()
            except _Interrupted:
                return
            except redis.RedisError as error:
                backoff = min(max(backoff * 2, 0.1), REDIS_BACKOFF_MAX)
                self.logger.warning(
                    "Worker %s: %s; retrying in %.1f s",
                    self.id,
                    describe_error(error, self.options.settings.redis),
                    backoff,
                )
                self._sleep(backoff)

    def _next_batch(self) -> list[bytes]:
        # Never take more than the worker will run before it is recycled.
        left = int(self.options.max_messages - self.status[PROCESSED])
        size = max(1, min(self.options.max_batch, int(BATCH_BUDGET / self._job_time), left))
        batch = self.queue.take(self.id, size)
        if batch:
            return batch
        self._flush()
        if self.status[STATE] != IDLE:
            self._set_state(IDLE)
            self.logger.debug("Wait for messages")
        self._blocking = True
        try:
            if self.stop_requested:
                return []
            raw = self.queue.take_blocking(self.id, self.options.block_timeout)
        finally:
            self._blocking = False
        return [raw] if raw is not None else []

    def _run_batch(self, batch: list[bytes]) -> None:
        for index, raw in enumerate(batch):
            if self.stop_requested:
                self._flush()
                self.queue.give_back(self.id, batch[index:])
                return
            started = time.monotonic()
            self._process(raw)
            elapsed = time.monotonic() - started
            self._job_time = 0.8 * self._job_time + 0.2 * max(elapsed, 1e-6)
            if elapsed > ACK_AT_ONCE_AFTER:
                self._flush()
            if elapsed > GIVE_BACK_AFTER and index + 1 < len(batch):
                self._flush()
                self.queue.give_back(self.id, batch[index + 1 :])
                return
        self._flush()

    def _process(self, raw: bytes) -> None:
        message = decode(raw)
        now = time.time()
        self._topic = message.topic
        self.status[JOB_STARTED] = now
        self._set_state(BUSY)
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("Got message: %s", raw[:500].decode("utf-8", "replace"))
        try:
            self._run_handler(message, now)
        finally:
            self.status[PROCESSED] += 1
            elapsed = time.time() - now
            self.logger.debug(
                "Message processed in %.3f seconds [%d/%d]",
                elapsed,
                self.status[PROCESSED],
                self.options.max_messages,
            )
            self.status[JOB_STARTED] = 0.0

    def _run_handler(self, message: Message, started: float) -> None:
        raw = message.raw
        if message.problem is not None:
            self._fail(message, f"unusable message: {message.problem}", retryable=False)
            return
        handler = self.registry.get(message.topic)
        if handler is None:
            self._fail(message, f"unknown topic {message.topic!r}", retryable=False)
            return
        job = Job(self.options.settings, self.logger, self.id, self.mail, message.topic)
        try:
            handler(message.payload, job)
        except PayloadError as error:
            self._fail(message, f"bad payload for {message.topic}: {error}", retryable=False)
        except PermanentFailure as error:
            self._fail(message, str(error), retryable=False, payload=error.payload)
        except RetryLater as error:
            self._fail(message, str(error), payload=error.payload)
        except Exception as error:
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
            self._pending_acks.append(raw)
            self.status[DONE] += 1
            self._stats.outcome("done")
            if message.enqueue_ts > 0:
                done = time.time()
                self._stats.latency(WAIT, started - message.enqueue_ts)
                self._stats.latency(END_TO_END, done - message.enqueue_ts)

    def _fail(
        self,
        message: Message,
        reason: str,
        *,
        retryable: bool = True,
        payload: Any = None,
        trace: str = "",
    ) -> None:
        self.status[FAILED] += 1
        replacement = None if payload is None else with_payload(message.raw, payload)
        result = self.queue.fail(
            self.id,
            message.raw,
            reason,
            traceback=trace,
            retryable=retryable,
            replacement=replacement,
        )
        outcomes = {
            "retried": (logging.WARNING, "will be retried"),
            "dead": (logging.ERROR, "moved to the dead letters"),
            # A supervisor took it over meanwhile (this worker's heartbeat had expired).
            "gone": (logging.WARNING, "was already recovered by a supervisor"),
        }
        level, what = outcomes[result]
        self.logger.log(level, "Message on %s %s: %s", message.topic, what, reason)

    def _flush(self) -> None:
        """Acks the finished messages and adds the stats, in one round trip."""
        if not self._pending_acks and not self._stats.fields:
            return
        pipe = self.redis.pipeline(transaction=False)
        self.queue.ack_into(pipe, self.id, self._pending_acks)
        self._stats.flush_into(pipe, time.time())
        pipe.execute()
        self._pending_acks.clear()

    def _resync(self) -> None:
        """After Redis came back: ack what finished, give back what was taken and not run."""
        self._flush()
        leftover = cast(list[bytes], self.redis.lrange(keys.processing_list(self.id), 0, -1))
        if leftover:
            self.queue.give_back(self.id, list(reversed(leftover)))

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop_requested and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))

    def _set_state(self, state: float) -> None:
        self.status[STATE] = state
        self.status[SINCE] = time.time()

    # --- heartbeat ------------------------------------------------------------------------

    def beat(self, client: redis.Redis, process: psutil.Process | None = None) -> None:
        """Publishes this worker's state (hash with a TTL) and keeps it registered."""
        status = self.status
        fields: dict[Any, str | int | float] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pool": self.options.pool,
            "slot": self.options.slot,
            "state": STATE_NAMES.get(status[STATE], "unknown"),
            "since": status[SINCE],
            "job_started": status[JOB_STARTED],
            "topic": self._topic if status[STATE] == BUSY else "",
            "done": int(status[DONE]),
            "failed": int(status[FAILED]),
            "processed": int(status[PROCESSED]),
            "max_messages": self.options.max_messages,
            "beat": time.time(),
        }
        if process is not None:
            with process.oneshot():
                fields["rss"] = process.memory_info().rss
                fields["cpu"] = process.cpu_percent()
        key = keys.heartbeat(self.id)
        pipe = client.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, int(self.options.heartbeat_ttl))
        pipe.sadd(keys.WORKERS, self.id)
        pipe.execute()


class _Heartbeat(threading.Thread):
    """Beats every ``heartbeat_interval`` on its own connection; watches the supervisor."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(name=f"heartbeat-{worker.id}", daemon=True)
        self.worker = worker
        self._stopped = threading.Event()
        self._client = connect(worker.options.settings.redis, client_name=f"tuitop:{worker.id}:hb")
        self._process = psutil.Process()

    def run(self) -> None:
        interval = self.worker.options.heartbeat_interval
        failing = False
        while not self._stopped.wait(interval):
            options = self.worker.options
            if not process_running(options.supervisor_pid, options.supervisor_started):
                self.worker.logger.warning(
                    "Worker %s: its supervisor is gone; stopping after the current job",
                    self.worker.id,
                )
                # The main thread may be blocked in BLMOVE: a signal wakes it up.
                os.kill(os.getpid(), signal.SIGTERM)
                return
            try:
                self.worker.beat(self._client, self._process)
                failing = False
            except redis.RedisError as error:
                if not failing:
                    self.worker.logger.debug(
                        "Worker %s: heartbeat failed: %s", self.worker.id, error
                    )
                failing = True

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=5)
        self._client.close()
