"""The pool: starts, watches, stops and replaces worker processes.

gunicorn's arbiter in miniature. Signal handlers only record the signal (and wake the loop
through a pipe); one loop then, in order: handles recorded signals, checks Redis, reaps
workers that exited and recovers their processing lists at once, kills workers whose job
ran past the time limit, moves due retries back to the queue, recovers the lists of
workers anywhere whose heartbeat expired, starts or stops workers to match the wanted
count, publishes the pool's own heartbeat — then sleeps until the next event (a signal, a
worker exiting, a retry falling due, or the next one-second tick).

A worker that dies at start (Redis refused the password, a handler module is broken) is not
restarted in a tight loop: the next start waits 1, 2, 4 … 60 s, and the log says why.

Shutdown is warm first (SIGTERM: each worker finishes its job and leaves), cold on a second
signal or after the grace period (SIGKILL; what the killed workers held is recovered).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, cast

import psutil
import redis
from setproctitle import setproctitle

from tuitop import keys, tuleapworkers
from tuitop.config import MAX_WORKERS, ConfigError, RedisSettings, Settings
from tuitop.lanes import DEFAULT_LANE, Staffing
from tuitop.log import setup_logging, sync_level
from tuitop.mail import DEFAULT_SENDMAIL
from tuitop.osutil import process_running
from tuitop.queue import Queue, RetryPolicy
from tuitop.redisconn import connect, describe_error
from tuitop.stats import POOL_TICK_SCRIPT, StatsBatch, pool_tick
from tuitop.tasks import KILL_GRACE, TaskCommand, kill_group, sweep_leftovers
from tuitop.watch import ConfigWatcher
from tuitop.worker import (
    BUSY,
    EXIT_HANDLERS,
    EXIT_OK,
    EXIT_REDIS_AUTH,
    EXIT_REDIS_UNREACHABLE,
    IDLE,
    JOB_CLOCK,
    STATE,
    STATUS_SLOTS,
    TASK_PID,
    StatusArray,
    WorkerOptions,
    worker_id_of,
    worker_main,
)

BOOT_WINDOW = 5.0
"""A worker that exits sooner than this after its start failed to start."""
BOOT_BACKOFF_MAX = 60.0
REDIS_BACKOFF_MAX = 30.0
ORPHAN_SCAN_EVERY = 5.0
TIMEOUT_REASON = "its job ran past the time limit"
TASK_LIMIT_MARGIN = KILL_GRACE + 5.0
"""A worker stops its own task at the time limit; the pool steps in only this much later."""
# Claims the pool's name, or extends the claim, while nobody else holds it (a claim that
# expired while Redis was away is simply taken again).
_CLAIM_NAME_SCRIPT = """
local owner = redis.call('GET', KEYS[1])
if owner == false or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""
SUPERVISOR_SOCKET_TIMEOUT = 3.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SCALE_SIGNALS: dict[int, int] = {signal.SIGTTIN: +1, signal.SIGTTOU: -1}
"""gunicorn's convention: one more worker, one fewer, for this session."""
CONTROL_STEPS = {ord("+"): +1, ord("-"): -1}
"""The bytes of the UI's control pipe, the same steps as SCALE_SIGNALS."""
FORKSERVER_LOST = 255
"""The exit code multiprocessing reports when it lost the forkserver, not the worker."""
EXIT_REASONS = {
    EXIT_REDIS_AUTH: "Redis refused the password",
    EXIT_REDIS_UNREACHABLE: "Redis was unreachable",
    EXIT_HANDLERS: "its handler modules could not be loaded",
}


@dataclass(frozen=True)
class PoolOptions:
    """How the pool runs (command-line options, not the config files)."""

    pool_name: str = field(default_factory=socket.gethostname)
    log_file: str | None = None
    log_to_stderr: bool = True
    max_messages: int = 1000
    max_batch: int = 32
    job_timeout: float = 15 * 60.0
    grace_period: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    handler_modules: tuple[str, ...] = ()
    sendmail: str = DEFAULT_SENDMAIL
    task: TaskCommand | None = None
    """Tuleap's task process, for every message no built-in handler takes."""
    tuleap_hold_limit: float = tuleapworkers.HOLD_LIMIT
    """A Tuleap worker's list unchanged this long (and no pid file of it here) is
    recovered: its worker is gone (tuitop.tuleapworkers.left_behind)."""
    tick: float = 1.0
    heartbeat_ttl: float = 10.0
    control_fd: int | None = None
    """A pipe from the UI that runs this pool: ``+``/``-`` one worker more/fewer for the
    session, each byte counted (signals of one kind sent close together merge); its end of
    file (the UI is gone, however it died) is a warm stop that never turns cold."""


@dataclass
class WorkerRecord:
    """What the pool keeps about one worker process."""

    slot: int
    worker_id: str
    """``pool/slot#pid``: the id the process registers under (see worker.worker_id_of)."""
    process: BaseProcess
    status: StatusArray
    started: float = field(default_factory=time.monotonic)
    stopping: bool = False
    kill_reason: str = ""
    detached: bool = False
    """Its forkserver is gone, so its exit code is lost; watched by pid until it exits."""
    redis: RedisSettings = field(default_factory=RedisSettings)
    """The Redis it serves (the pool may have moved to another since it started)."""
    lane: str = DEFAULT_LANE
    """The lane it is for; ``serves``: the lanes it takes from, its own first."""
    serves: tuple[str, ...] = (DEFAULT_LANE,)


class Supervisor:
    """Runs the pool until asked to stop; ``run()`` returns the process exit code."""

    def __init__(
        self,
        settings: Settings,
        options: PoolOptions,
        *,
        reload: Callable[[], Settings] | None = None,
        watch: Sequence[str] = (),
    ) -> None:
        """``reload`` reads the config files again (SIGHUP, and saves of the ``watch``ed
        files); it raises ConfigError for a config that cannot be used."""
        self.settings = settings
        self.options = options
        self._reload = reload
        self._watch = tuple(watch)
        self._watcher: ConfigWatcher | None = None
        self._reload_requested = False
        self.config_error = ""
        """The error of the last reload that failed ('' once a good config loaded)."""
        self.loaded_at = time.time()
        self.wanted_override: int | None = None
        """The worker count set for this session (SIGTTIN/SIGTTOU), until the next load."""
        self._config_version = 0
        self._config_published = False
        self._outdated: dict[int, str] = {}
        """Slots whose worker is to be replaced (rolling, one at a time), and why."""
        self._left: dict[RedisSettings, Queue] = {}
        """Servers the pool left for another, while some of its old workers finish there."""
        """Slots whose worker runs with settings older than those in force."""
        self._context: BaseContext = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["tuitop.worker"])
        self.level: Any = self._context.RawValue("i", int(settings.log_level))
        self.logger = setup_logging(
            log_file=options.log_file,
            to_stderr=options.log_to_stderr,
            level=self.level,
            secrets=lambda: self.settings.secrets(),
        )
        self.workers: dict[int, WorkerRecord] = {}
        self._signals: list[int] = []
        self._wake_read, self._wake_write = os.pipe()
        self._control_fd: int | None = None
        if options.control_fd is not None:
            # A private copy (not inherited), and /dev/null in its place: the forkserver,
            # the workers and what their handlers run must not read, hold or block on it.
            self._control_fd = os.dup(options.control_fd)
            os.set_blocking(self._control_fd, False)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, options.control_fd)
            os.close(devnull)
        self._stop_signals = 0
        self._ui_gone = False
        """The UI that ran this pool died: a warm stop that no signal count makes cold."""
        self._redis: redis.Redis | None = None
        self._queue: Queue | None = None
        self._redis_ok = False
        self._redis_down_since = 0.0
        self._redis_retry_at = 0.0
        self._redis_backoff = 0.0
        self._boot_failures = 0
        self._next_start_at = 0.0
        self._last_orphan_scan = 0.0
        self._last_tuleap_scan = 0.0
        self._pool_token = f"{socket.gethostname()}:{os.getpid()}:{time.time()}"
        self._owns_name = False
        self._claim_script: Any = None
        self._tick_script: Any = None
        self._served_lanes: set[str] = set()
        """Every lane a worker of this pool served since it started (and its workers may
        have moved messages to): released as the pool stops."""
        self._started = psutil.Process().create_time()

    # --- signals -------------------------------------------------------------------------

    def _install_signals(self) -> None:
        os.set_blocking(self._wake_write, False)
        os.set_blocking(self._wake_read, False)
        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        for signum in (*STOP_SIGNALS, signal.SIGHUP, *SCALE_SIGNALS):
            signal.signal(signum, self._record_signal)

    def _record_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum in STOP_SIGNALS:
                self._stop_signals += 1
            elif signum == signal.SIGHUP and self._stop_signals == 0:
                self.logger.info("SIGHUP: reloading the configuration")
                self.reload()
            elif signum in SCALE_SIGNALS and self._stop_signals == 0:
                self.scale_by(SCALE_SIGNALS[signum])

    def scale_by(self, step: int) -> None:
        """Changes the wanted worker count for this session (SIGTTIN +1, SIGTTOU -1, as
        gunicorn does; the UI's ``+``/``-``). The config files win again at their next
        successful load (a save, SIGHUP)."""
        if not self.settings.redis.configured:
            self.logger.warning("No Redis is configured: there is no worker to add or remove")
            return
        before = self.wanted
        after = min(max(before + step, 0), MAX_WORKERS)
        if after == before:
            return
        self.wanted_override = after
        self._wake()
        self.logger.warning(
            "workers %d → %d for this session ($sys_nb_backend_workers = %d comes back at "
            "the next save of the config files)",
            before,
            after,
            self.settings.backend_workers,
        )

    @property
    def wanted(self) -> int:
        """How many workers the pool runs: the session's count, else the config's (none
        while no Redis is configured)."""
        if not self.settings.redis.configured:
            return 0
        if self.wanted_override is not None:
            return self.wanted_override
        return self.settings.backend_workers

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_read, 512):
                pass
        except BlockingIOError:
            pass

    # --- configuration ---------------------------------------------------------------------

    def request_reload(self) -> None:
        """Asks the loop to reload soon; safe from any thread (the watcher's)."""
        self._reload_requested = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"r")

    def reload(self) -> None:
        """Reads the config again (when a loader was given) and applies it; a config that
        does not load is logged with its place, kept as ``config_error`` for the views, and
        the one in force stays."""
        if self._reload is None:
            return
        try:
            settings = self._reload()
        except ConfigError as error:
            self.config_error = str(error)
            self._config_published = False
            self.logger.error("config error, the last good configuration stays: %s", error)
            return
        if self.config_error:
            self.logger.warning("config: the error is fixed, the files load again")
        self.config_error = ""
        if self.wanted_override is not None:
            self.logger.warning(
                "config: the session's worker count (%d) gives way to the files'",
                self.wanted_override,
            )
            self.wanted_override = None
        self.apply(settings)

    def apply(self, settings: Settings) -> None:
        """Makes ``settings`` the ones in force; the loop does the rest (scaling).

        Each change is logged on one line at warning level, so that it shows under the
        default ``$sys_logger_level`` too: an admin who saved a file wants to see it taken.
        """
        old = self.settings
        changes: list[str] = []
        if settings.redis != old.redis and not old.redis.configured:
            changes.append(f"Redis at {settings.redis.address}")
        elif settings.redis != old.redis and _same_server(settings.redis, old.redis):
            changes.append(
                f"Redis {settings.redis.address}: new credentials; the workers reconnect one "
                "by one after their current job"
            )
            self._leave_redis()
        elif settings.redis != old.redis:
            changes.append(
                f"Redis {old.redis.address} → {settings.redis.address}: the pool moves now, "
                "its workers one by one after their current job"
            )
            self._leave_redis()
        if old.log_level != settings.log_level:
            changes.append(f"log level {old.log_level} → {settings.log_level}")
        if old.backend_workers != settings.backend_workers:
            changes.append(f"workers {old.backend_workers} → {settings.backend_workers}")
        if old.async_scope != settings.async_scope:
            changes.append(f"async scope {old.async_scope} → {settings.async_scope}")
        if old.lanes != settings.lanes:
            changes.append(f"lanes {old.lanes} → {settings.lanes}")
        if old.mail != settings.mail:
            # Workers hold the mail settings: replace them one at a time, each after its job.
            changes.append("mail settings changed: workers are replaced one by one")
        if _worker_settings(old) != _worker_settings(settings) or settings.redis != old.redis:
            self._outdated = dict.fromkeys(self.workers, "its settings are outdated")
        self.settings = settings
        if changes or old != settings:
            # A save that changed nothing (a touch, a SIGHUP) is no new version.
            self.loaded_at = time.time()
            self._config_published = False
        self.level.value = int(settings.log_level)
        sync_level(self.logger, self.level)
        for change in changes:
            self.logger.warning("config: %s", change)

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        setproctitle(f"tuitop: pool {self.options.pool_name}")
        self._install_signals()
        settings = self.settings
        if settings.redis.configured:
            self.logger.info(
                "Pool %s starting: %d worker(s) wanted, Redis at %s",
                self.options.pool_name,
                settings.backend_workers,
                settings.redis.address,
            )
        else:
            self.logger.warning(
                "Redis is not configured ($redis_server is empty): no worker runs; "
                "waiting for the configuration to change"
            )
        if self.options.task is not None:
            self.logger.info("Tasks run as %s", self.options.task.describe())
            # What the tasks of an earlier run of a pool killed whole left behind.
            sweep_leftovers(self._worker_alive, self.logger)
        if self._watch and self._reload is not None:
            self._watcher = ConfigWatcher(self._watch, self.request_reload, self.logger)
            self._watcher.start()
        try:
            while self._stop_signals == 0 and not self._ui_gone:
                self._cycle()
                self._sleep()
                self._handle_signals()
                if self._reload_requested:
                    self._reload_requested = False
                    self.reload()
            self._shutdown()
        finally:
            if self._watcher is not None:
                self._watcher.stop()
            signal.set_wakeup_fd(-1)
            self._release_name()
        return 0

    def _cycle(self) -> None:
        try:
            self._cycle_once()
        except Exception:
            # A bug must not take the pool (and its running jobs) down: log it, go on.
            self.logger.exception("Unexpected error in the pool's loop")

    def _cycle_once(self) -> None:
        self._check_redis()
        self._reap()
        self._enforce_time_limit()
        self._reap()  # a worker just killed for its time limit frees its slot for the next
        if self._redis_ok:
            try:
                self._publish()
                assert self._queue is not None
                self._queue.move_due()
                self._recover_orphans()
            except redis.RedisError as error:
                self._redis_failed(error)
        self._scale()
        self._tend_left_servers()

    def _sleep(self) -> None:
        now = time.time()
        timeout = self.options.tick
        if self._next_start_at > time.monotonic():
            timeout = min(timeout, self._next_start_at - time.monotonic())
        if self._redis_ok and self._queue is not None:
            try:
                due = self._queue.next_due()
            except redis.RedisError as error:
                self._redis_failed(error)
                due = None
            if due is not None:
                timeout = min(timeout, max(due - now, 0.0))
        waitables: list[Any] = [self._wake_read]
        waitables.extend(r.process.sentinel for r in self.workers.values() if not r.detached)
        if self._control_fd is not None:
            waitables.append(self._control_fd)
        ready = wait(waitables, timeout=max(timeout, 0.0))
        self._drain_wakeups()
        if self._control_fd is not None and self._control_fd in ready:
            self._read_control()

    def _read_control(self) -> None:
        """Applies what the UI wrote on the control pipe (see ``PoolOptions.control_fd``)."""
        if self._control_fd is None:
            return
        try:
            data = os.read(self._control_fd, 512)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            os.close(self._control_fd)
            self._control_fd = None
            if self._stop_signals == 0:
                self.logger.warning("The UI that ran this pool is gone: stopping warm")
            self._ui_gone = True
            return
        for byte in data:
            if self._stop_signals == 0 and byte in CONTROL_STEPS:
                self.scale_by(CONTROL_STEPS[byte])

    # --- redis -----------------------------------------------------------------------------

    def _check_redis(self) -> None:
        redis_settings = self.settings.redis
        if not redis_settings.configured:
            self._redis_ok = False
            return
        if self._redis_ok:
            return
        if time.monotonic() < self._redis_retry_at:
            return
        if self._redis is None:
            # A short timeout: a stalled Redis must not stall the loop (time limits, signals).
            self._redis = connect(
                redis_settings,
                client_name=f"tuitop:{self.options.pool_name}:supervisor",
                socket_timeout=SUPERVISOR_SOCKET_TIMEOUT,
            )
            self._queue = Queue(self._redis, self.options.retry)
            self._claim_script = self._redis.register_script(_CLAIM_NAME_SCRIPT)
            self._tick_script = self._redis.register_script(POOL_TICK_SCRIPT)
        try:
            self._redis.ping()
            self._claim_name()
        except redis.RedisError as error:
            self._redis_failed(error)
            return
        if not self._owns_name:
            return
        if self._redis_down_since:
            self.logger.warning(
                "Redis is back after %.0f s", time.monotonic() - self._redis_down_since
            )
        self._redis_ok = True
        self._redis_down_since = 0.0
        self._redis_backoff = 0.0
        try:
            assert self._queue is not None
            for lane in self._queue.list_lanes():
                self.logger.warning(
                    "Lane %s had messages no pool listed (left by an older tuitop): listed "
                    "now, moved back unless a pool serves it",
                    lane,
                )
            self._recover_orphans(force=True)
        except redis.RedisError as error:
            self._redis_failed(error)

    def _redis_failed(self, error: BaseException) -> None:
        self._redis_ok = False
        self._redis_backoff = min(max(self._redis_backoff * 2, 1.0), REDIS_BACKOFF_MAX)
        self._redis_retry_at = time.monotonic() + self._redis_backoff
        if not self._redis_down_since:
            self._redis_down_since = time.monotonic()
        self.logger.error(
            "%s; retrying in %.0f s",
            describe_error(error, self.settings.redis),
            self._redis_backoff,
        )
        if self._redis is not None:
            self._redis.connection_pool.disconnect()

    def _claim_name(self) -> None:
        """Takes this pool's name in Redis, so that two pools never share worker ids."""
        assert self._redis is not None
        owner_key = keys.pool(self.options.pool_name) + ":owner"
        ttl = int(self.options.heartbeat_ttl)
        if self._claim_script(keys=[owner_key], args=[self._pool_token, ttl]):
            self._owns_name = True
            return
        owner = cast(bytes | None, self._redis.get(owner_key))
        self._owns_name = False
        self._redis_retry_at = time.monotonic() + ttl
        self.logger.error(
            "Another pool named %s is running (%s); start this one with another "
            "--pool-name. Trying again in %d s",
            self.options.pool_name,
            (owner or b"?").decode(errors="replace"),
            ttl,
        )
        # Workers started under the name (before a partition, say) must not serve on under
        # it beside the pool that holds it now: their ids could meet that pool's.
        for record in self.workers.values():
            self._stop_worker(record, "the pool lost its name")

    def _keep_name(self) -> None:
        """Renews the name claim while shutting down (the grace period outlasts its TTL)."""
        if not (self._redis_ok and self._owns_name and self._redis is not None):
            return
        owner_key = keys.pool(self.options.pool_name) + ":owner"
        ttl = int(self.options.heartbeat_ttl)
        try:
            if not self._claim_script(keys=[owner_key], args=[self._pool_token, ttl]):
                self._owns_name = False  # another pool took it: its lanes are its own
        except redis.RedisError as error:
            self._redis_failed(error)

    def _release_name(self) -> None:
        if not (self._owns_name and self._redis is not None):
            return
        try:
            owner_key = keys.pool(self.options.pool_name) + ":owner"
            if self._redis.get(owner_key) == self._pool_token.encode():
                pipe = self._redis.pipeline(transaction=True)
                pipe.delete(owner_key, keys.pool(self.options.pool_name))
                pipe.srem(keys.POOLS, self.options.pool_name)
                pipe.execute()
        except redis.RedisError:
            pass  # it expires on its own

    def _publish(self) -> None:
        assert self._redis is not None
        name = self.options.pool_name
        settings = self.settings
        running = sum(1 for record in self.workers.values() if not record.stopping)
        served = {lane for r in self.workers.values() if not r.stopping for lane in r.serves}
        served.discard(DEFAULT_LANE)  # Tuleap's list: every pool serves it
        fields: dict[Any, str | int | float] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "wanted": self.wanted,
            "configured": settings.backend_workers,
            "running": running,
            "files": ",".join(settings.files),
            "log_level": str(settings.log_level),
            "async_scope": str(settings.async_scope),
            "lanes": settings.lanes.describe(),
            "served": ",".join(sorted(served)),
            "redis": settings.redis.address,
            "loaded_at": self.loaded_at,
            "config_error": self.config_error,
            "beat": time.time(),
        }
        ttl = int(self.options.heartbeat_ttl)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(keys.pool(name), mapping=fields)
        pipe.expire(keys.pool(name), ttl)
        pipe.sadd(keys.POOLS, name)
        # The lanes served, and the depth over time that every view draws, once a tick.
        tick_keys, tick_args = pool_tick(served, time.time())
        self._tick_script(keys=tick_keys, args=tick_args, client=pipe)
        pipe.execute()
        if not self._config_published:
            self._publish_config()
        if not self._claim_script(keys=[keys.pool(name) + ":owner"], args=[self._pool_token, ttl]):
            # Our claim expired (Redis was away) and another pool took the name meanwhile:
            # its workers' ids could meet ours. Stop ours, warm, and start none.
            self._owns_name = False
            self._redis_ok = False
            self._redis_retry_at = time.monotonic() + ttl
            self.logger.error(
                "Pool name %s was taken over by another pool; stopping this pool's workers",
                name,
            )
            for record in self.workers.values():
                self._stop_worker(record, "the pool lost its name")

    def _leave_redis(self) -> None:
        """Lets go of the Redis in force (the config names another): its name claim is
        released; its client is kept while workers still serve it, to run its due retries,
        recover what they leave there and say what it still holds when the last one left."""
        self._release_name()
        if self._redis is not None and self._queue is not None:
            left = self._left.pop(self.settings.redis, None)
            if left is not None and left is not self._queue:
                left.redis.close()
            self._left[self.settings.redis] = self._queue
        self._redis = self._queue = None
        self._redis_ok = self._owns_name = False
        self._redis_retry_at = self._redis_down_since = self._redis_backoff = 0.0
        self._config_published = False

    def _queue_for(self, record: WorkerRecord) -> Queue | None:
        if record.redis == self.settings.redis:
            return self._queue if self._redis_ok else None
        return self._left.get(record.redis)

    def _tend_left_servers(self) -> None:
        """Due retries of the servers left behind go on while their workers finish; a server
        no worker serves any more is reported and closed."""
        for settings, queue in list(self._left.items()):
            if settings == self.settings.redis:
                del self._left[settings]  # back on it: it is the current one again
                continue
            served = any(record.redis == settings for record in self.workers.values())
            try:
                queue.move_due()
                if not served:
                    if not _same_server(settings, self.settings.redis):
                        self._release_lanes(queue, settings)
                    self._report_left(settings, queue)
            except redis.RedisError as error:
                if not served:
                    self.logger.warning(
                        "Left Redis %s; could not check what it still holds: %s",
                        settings.address,
                        describe_error(error, settings),
                    )
            if not served:
                del self._left[settings]
                queue.redis.close()

    def _report_left(self, settings: RedisSettings, queue: Queue) -> None:
        if _same_server(settings, self.settings.redis):
            return  # only the credentials changed: nothing was left anywhere
        lanes = cast(list[bytes], queue.redis.zrange(keys.LANES, 0, -1))
        pipe = queue.redis.pipeline(transaction=False)
        pipe.zcard(keys.DELAYED)
        for key in (keys.QUEUE, *(keys.lane_list(lane.decode()) for lane in lanes)):
            pipe.llen(key)
        delayed, *depths = pipe.execute()
        waiting = sum(depths)
        level = logging.WARNING if waiting or delayed else logging.INFO
        self.logger.log(
            level,
            "Left Redis %s: it still holds %d queued and %d delayed message(s), which this "
            "pool no longer serves",
            settings.address,
            waiting,
            delayed,
        )

    def _publish_config(self) -> None:
        """Publishes the async scope in force, with a new version, for producers elsewhere
        (Notifier reads it instead of the files). Last writer wins among pools."""
        assert self._redis is not None
        settings = self.settings
        pipe = self._redis.pipeline(transaction=True)
        pipe.hincrby(keys.CONFIG, "version", 1)
        pipe.hset(
            keys.CONFIG,
            mapping={
                "async_scope": str(settings.async_scope),
                "log_level": str(settings.log_level),
                "workers": settings.backend_workers,
                "pool": self.options.pool_name,
                "loaded_at": self.loaded_at,
                "config_error": self.config_error,
            },
        )
        self._config_version = int(pipe.execute()[0])
        self._config_published = True

    # --- workers ---------------------------------------------------------------------------

    def _slot_name(self, slot: int) -> str:
        return f"{self.options.pool_name}/{slot}"

    def _start(self, slot: int, lane: str, serves: tuple[str, ...]) -> None:
        slot_name = self._slot_name(slot)
        status = self._context.RawArray("d", STATUS_SLOTS)
        options = self.options
        worker_options = WorkerOptions(
            slot_name=slot_name,
            pool=options.pool_name,
            slot=slot,
            settings=self.settings,
            supervisor_pid=os.getpid(),
            supervisor_started=self._started,
            log_file=options.log_file,
            log_to_stderr=options.log_to_stderr,
            max_messages=options.max_messages,
            max_batch=options.max_batch,
            heartbeat_ttl=options.heartbeat_ttl,
            retry=options.retry,
            handler_modules=options.handler_modules,
            sendmail=options.sendmail,
            task=options.task,
            job_timeout=options.job_timeout,
            grace_period=options.grace_period,
            lane=lane,
            serves=serves,
        )
        process = self._context.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(worker_options, status, self.level),
            name=f"tuitop-worker {slot_name}",
        )
        process.start()
        worker_id = worker_id_of(slot_name, process.pid)
        self.workers[slot] = WorkerRecord(
            slot,
            worker_id,
            process,
            cast(StatusArray, status),
            redis=self.settings.redis,
            lane=lane,
            serves=serves,
        )
        self._served_lanes.update(served for served in serves if served != DEFAULT_LANE)
        self.logger.debug("Started worker %s for lane %s", worker_id, lane)

    def _active(self) -> dict[int, WorkerRecord]:
        return {slot: record for slot, record in self.workers.items() if not record.stopping}

    def _scale(self) -> None:
        wanted = self.wanted
        staffing = Staffing(self.settings.lanes, wanted)
        active = self._active()
        for slot in staffing.misfits({s: (r.lane, r.serves) for s, r in active.items()}):
            self._outdated.setdefault(slot, "its lane changed")
        # Scaling down, stop the workers due for replacement first, then those of lanes over
        # their share, then the highest slots.
        surplus = staffing.surplus_first({slot: record.lane for slot, record in active.items()})
        by_preference = sorted(surplus, key=lambda slot: slot not in self._outdated)
        for slot in by_preference[: max(len(active) - wanted, 0)]:
            self._stop_worker(self.workers[slot], "the pool is scaled down")
        active = self._active()
        self._outdated = {s: why for s, why in self._outdated.items() if s in active}
        replacing = any(
            record.stopping and not record.kill_reason for record in self.workers.values()
        )
        # Replace only while a replacement can start (the new Redis answers), or capacity
        # would drop for nothing.
        can_start = self._redis_ok and time.monotonic() >= self._next_start_at
        if self._outdated and len(active) >= wanted and can_start:
            # Idle ones at once (they hold no job, and an outdated worker may move messages
            # to a lane no longer served); busy ones rolling, one at a time, after its job.
            idle = [slot for slot in self._outdated if active[slot].status[STATE] == IDLE]
            if not idle and not replacing:
                idle = [next(iter(self._outdated))]
            for slot in idle:
                self._stop_worker(self.workers[slot], self._outdated.pop(slot))
            active = self._active()
        missing = wanted - min(len(active), wanted)
        if missing <= 0 or not self._redis_ok or time.monotonic() < self._next_start_at:
            return
        lanes = staffing.to_start((record.lane for record in active.values()), missing)
        slot = 0
        for lane in lanes:
            while slot in self.workers:
                slot += 1
            self._start(slot, lane, staffing.serves(lane))

    def _stop_worker(self, record: WorkerRecord, why: str) -> None:
        if record.stopping:
            return
        record.stopping = True
        self.logger.info("Stopping worker %s after its current job (%s)", record.worker_id, why)
        if record.process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.process.pid, signal.SIGTERM)

    def _kill(self, record: WorkerRecord, reason: str) -> None:
        record.kill_reason = reason
        record.stopping = True
        if record.process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.process.pid, signal.SIGKILL)
            record.process.join(timeout=1.0)  # SIGKILL is quick; reap it in this cycle
        self._kill_task_group(record)

    def _kill_task_group(self, record: WorkerRecord) -> None:
        """Kills the process group of the task a worker killed or dead was running (its
        leader dies with the worker; what it started may live on in the group)."""
        pgid = int(record.status[TASK_PID])
        record.status[TASK_PID] = 0
        if pgid and kill_group(pgid):
            self.logger.warning(
                "Killed the task process group %d of worker %s", pgid, record.worker_id
            )

    def _end_tasks_of(self, record: WorkerRecord) -> None:
        """Once a worker is gone, however it ended: its task's group, and every process
        its tasks started that left the group (a daemon in a session of its own), found
        by the worker's id in their environment — as systemd ends what a Tuleap worker's
        unit leaves behind when it restarts."""
        if self.options.task is None:
            return
        self._kill_task_group(record)
        sweep_leftovers(lambda worker_id: worker_id != record.worker_id, self.logger)

    def _worker_alive(self, worker_id: str) -> bool:
        """Whether the worker ``pool/slot#pid`` may still run its task (for the sweep of
        task processes left behind: when unsure, alive)."""
        for record in self.workers.values():
            if record.worker_id == worker_id:
                return record.process.is_alive() and not record.kill_reason
        pid = worker_id.rpartition("#")[2]
        return not pid.isdigit() or process_running(int(pid))

    def _enforce_time_limit(self) -> None:
        now = time.monotonic()
        for record in list(self.workers.values()):
            started = record.status[JOB_CLOCK]
            if record.kill_reason or record.status[STATE] != BUSY or not started:
                continue
            limit = self.options.job_timeout
            if record.status[TASK_PID]:
                limit += TASK_LIMIT_MARGIN  # its worker stops it at the limit itself
            if now - started > limit:
                self.logger.error(
                    "Task timed out: worker %s ran one job for more than %.0f s; killing it",
                    record.worker_id,
                    limit,
                )
                self._kill(record, f"{TIMEOUT_REASON} of {limit:.0f} s")

    def _reap(self) -> None:
        for slot, record in list(self.workers.items()):
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
            del self.workers[slot]
            self._end_tasks_of(record)
            code = record.process.exitcode
            lived = time.monotonic() - record.started
            self._account_exit(record, code, lived)

    def _account_exit(self, record: WorkerRecord, code: int | None, lived: float) -> None:
        how = _describe_exit(code, record.detached)
        clean = code == EXIT_OK and not record.kill_reason
        if lived >= BOOT_WINDOW:
            self._boot_failures = 0  # it did start: whatever happened now is no boot failure
        if clean:
            self.logger.debug("Worker %s %s", record.worker_id, how)
        elif record.kill_reason:
            self.logger.warning("Worker %s %s: %s", record.worker_id, how, record.kill_reason)
        elif lived < BOOT_WINDOW or code in EXIT_REASONS:
            # Several workers failing at once are one failure, not several steps of back-off.
            if time.monotonic() >= self._next_start_at:
                self._boot_failures += 1
            delay = min(2.0 ** (self._boot_failures - 1), BOOT_BACKOFF_MAX)
            self._next_start_at = time.monotonic() + delay
            reason = EXIT_REASONS.get(code or 0, "see the lines above")
            self.logger.error(
                "Worker %s %s %.1f s after its start (%s); next start in %.0f s",
                record.worker_id,
                how,
                lived,
                reason,
                delay,
            )
        else:
            self.logger.error("Worker %s %s", record.worker_id, how)
        timed_out = record.kill_reason.startswith(TIMEOUT_REASON)
        queue = self._queue_for(record)
        if queue is not None and queue is not self._queue:
            self._recover_on_previous(queue, record, f"worker {record.worker_id} {how}")
        else:
            self._recover(record.worker_id, f"worker {record.worker_id} {how}", timed_out=timed_out)

    def _recover_on_previous(self, queue: Queue, record: WorkerRecord, reason: str) -> None:
        """A worker of the Redis the pool left: its list is recovered there, and said so."""
        try:
            recovery = queue.recover(record.worker_id, reason)
        except redis.RedisError as error:
            self.logger.error(
                "Could not recover worker %s's messages on the Redis left behind (%s): %s",
                record.worker_id,
                record.redis.address,
                describe_error(error, record.redis),
            )
            return
        if recovery.total:
            self.logger.warning(
                "Recovered %d message(s) of worker %s on the Redis left behind (%s)",
                recovery.total,
                record.worker_id,
                record.redis.address,
            )

    def _recover(
        self, worker_id: str, reason: str, *, timed_out: bool = False, silent: bool = False
    ) -> None:
        """Gives back what a worker that is gone held; retried by the next cycle if Redis is
        down (the worker stays registered until then)."""
        if not self._redis_ok or self._queue is None or self._redis is None:
            return
        try:
            recovery = self._queue.recover(worker_id, reason, unless_beating=silent)
            pipe = self._redis.pipeline(transaction=False)
            pipe.delete(keys.heartbeat(worker_id))
            if timed_out:
                batch = StatsBatch()
                batch.outcome("timedout")
                batch.flush_into(pipe, time.time())
            pipe.execute()
        except redis.RedisError as error:
            self._redis_failed(error)
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

    def _recover_tuleaps_lists(self) -> None:
        """What Tuleap's own workers left in their lists when they stopped for good (a
        hand-over to tuitop), looked at every quarter of the hold limit, a minute at most."""
        now = time.monotonic()
        every = min(60.0, self.options.tuleap_hold_limit / 4)
        if now - self._last_tuleap_scan < every:
            return
        self._last_tuleap_scan = now
        assert self._redis is not None
        for found in tuleapworkers.left_behind(self._redis, self.options.tuleap_hold_limit):
            why = (
                f"left by Tuleap's worker {found.number}: unchanged for "
                f"{self.options.tuleap_hold_limit:g} s, no worker {found.number} runs here"
            )
            self.logger.warning("%d message(s) %s: recovering them", found.messages, why)
            self._recover(found.worker_id, why)

    def _forget_gone_pools(self) -> None:
        """Takes out of the set of pools those with neither a heartbeat nor a name claim:
        every view reads each name it holds, so a set that only grows costs more and more."""
        assert self._redis is not None
        names = [m.decode() for m in cast(set[bytes], self._redis.smembers(keys.POOLS))]
        if not names:
            return
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.exists(keys.pool(name), keys.pool(name) + ":owner")
        gone = [name for name, alive in zip(names, pipe.execute(), strict=True) if not alive]
        if gone:
            self._redis.srem(keys.POOLS, *gone)

    def _recover_orphans(self, force: bool = False) -> None:
        """Recovers the lists of registered workers, on any host, whose heartbeat expired."""
        now = time.monotonic()
        if not force and now - self._last_orphan_scan < ORPHAN_SCAN_EVERY:
            return
        self._last_orphan_scan = now
        assert self._redis is not None and self._queue is not None
        for lane, moved in self._queue.recover_unserved_lanes(self.options.heartbeat_ttl).items():
            self.logger.warning(
                "No pool serves lane %s any more: %d message(s) moved back to %s",
                lane,
                moved,
                keys.QUEUE,
            )
        self._forget_gone_pools()
        self._recover_tuleaps_lists()
        ours = {record.worker_id for record in self.workers.values()}
        members = [m.decode() for m in cast(set[bytes], self._redis.smembers(keys.WORKERS))]
        candidates = [worker_id for worker_id in members if worker_id not in ours]
        if not candidates:
            return
        pipe = self._redis.pipeline(transaction=False)
        for worker_id in candidates:
            pipe.exists(keys.heartbeat(worker_id))
        for worker_id, alive in zip(candidates, pipe.execute(), strict=True):
            if not alive:
                self._recover(worker_id, f"worker {worker_id} stopped beating", silent=True)

    # --- shutdown --------------------------------------------------------------------------

    def _shutdown(self) -> None:
        self._say_stopping()
        alive = [record for record in self.workers.values() if record.process.is_alive()]
        if alive:
            self.logger.info(
                "Shutting down: %d worker(s) finish their current job (up to %.0f s; "
                "signal again to stop at once)",
                len(alive),
                self.options.grace_period,
            )
        for record in alive:
            self._stop_worker(record, "the pool is shutting down")
        deadline = time.monotonic() + self.options.grace_period
        # Two signals, even back to back, mean "now": no waiting for the jobs.
        while self.workers and time.monotonic() < deadline and self._stop_signals < 2:
            sentinels: list[Any] = [self._wake_read]
            sentinels.extend(r.process.sentinel for r in self.workers.values() if not r.detached)
            wait(sentinels, timeout=min(1.0, max(deadline - time.monotonic(), 0.0)))
            self._drain_wakeups()
            self._handle_signals()
            self._check_redis()
            self._keep_name()
            self._say_stopping()  # the views, and hand-back, see the pool to its end
            self._enforce_time_limit()
            self._reap()
        if self.workers:
            why = "a second signal" if self._stop_signals >= 2 else "the grace period"
            self.logger.warning(
                "Killing %d worker(s) after %s; what they held is recovered", len(self.workers), why
            )
            for record in self.workers.values():
                self._kill(record, f"killed at shutdown after {why}")
            for record in self.workers.values():
                record.process.join(timeout=5)
            self._reap()
        if self._redis_ok and self._owns_name and self._queue is not None:
            self._release_lanes(self._queue, self.settings.redis)
        elif self._served_lanes:
            why = "Redis does not answer" if self._owns_name else "this pool lost its name"
            self.logger.warning(
                "%s: lane(s) %s stay where they are (the next pool to start moves back "
                "what no pool serves)",
                why,
                ", ".join(sorted(self._served_lanes)),
            )
        self.logger.info("Pool %s stopped", self.options.pool_name)

    def _say_stopping(self) -> None:
        """Tells other pools at once that this one serves no lane any more (two pools
        stopping together must not each count on the other to keep a lane), and keeps the
        pool's heartbeat through the grace period."""
        if not (self._redis_ok and self._owns_name and self._redis is not None):
            return
        key = keys.pool(self.options.pool_name)
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hset(key, mapping={"served": "", "stopping": 1, "beat": time.time()})
            pipe.expire(key, int(self.options.heartbeat_ttl))
            pipe.execute()
        except redis.RedisError as error:
            self._redis_failed(error)

    def _release_lanes(self, queue: Queue, where: RedisSettings) -> None:
        """The lanes this pool served that no other live pool on ``queue``'s Redis serves
        go back to Tuleap's list there, as the pool stops or leaves that Redis: nothing
        waits in a list that only a tuitop reads once none runs (a Tuleap worker taking
        over, Tuleap's SYSTEM_CHECK)."""
        if not self._served_lanes:
            return
        client = queue.redis
        try:
            others = [
                name.decode()
                for name in cast(set[bytes], client.smembers(keys.POOLS))
                if name.decode() != self.options.pool_name
            ]
            pipe = client.pipeline(transaction=False)
            for name in others:
                pipe.hget(keys.pool(name), "served")
            still = {
                lane
                for served in pipe.execute()
                if served
                for lane in cast(bytes, served).decode().split(",")
            }
            lanes = sorted(self._served_lanes - still)
            moved = queue.move_lanes_back(lanes) if lanes else {}
        except redis.RedisError as error:
            self.logger.warning(
                "Could not move this pool's lanes back to %s on %s: %s (the next pool to "
                "start there does it)",
                keys.QUEUE,
                where.address,
                describe_error(error, where),
            )
            return
        for lane, count in moved.items():
            self.logger.warning(
                "No other pool serves lane %s on %s: %d message(s) moved back to %s",
                lane,
                where.address,
                count,
                keys.QUEUE,
            )


def _describe_exit(code: int | None, detached: bool) -> str:
    if detached:
        return "ended (its exit code was lost with the forkserver)"
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:  # a real-time signal has no name
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _worker_settings(settings: Settings) -> object:
    """What a running worker took from the settings at its start (beyond the log level,
    which is shared live, and the Redis address, which the pool keeps): a change replaces
    the workers one by one, each after its current job."""
    return settings.mail, settings.lanes


def _same_server(a: RedisSettings, b: RedisSettings) -> bool:
    return (a.host, a.port, a.tls) == (b.host, b.port, b.tls)
