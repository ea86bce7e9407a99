"""What the pool tells the service manager that runs it (systemd's ``Type=notify``).

Only the pool's process notifies: the variables are removed from its environment before
any worker starts (:mod:`tuitop.sdnotify`), so neither a worker nor a task process can
speak for it. Without ``$NOTIFY_SOCKET`` every method here does nothing.

* ``READY=1`` once, when the pool is as ready as it gets by itself (:func:`settled`): its
  wanted workers all run, each has registered in the store (its first heartbeat is
  written), and the pool's own heartbeat says so. When something outside the pool keeps
  it from that — the store does not answer at start, another pool holds its name, its
  workers fail at start — READY comes anyway, after the first try, with a ``STATUS=``
  that says what it waits for. We chose this over waiting: a start that waits for Redis
  times out after ``TimeoutStartSec``, and ``Restart=`` then restarts it over and over
  until systemd's start limit gives up on the unit for good, while the pool itself
  retries the store with back-off forever and loses nothing meanwhile. Whether work is
  done is for monitoring (``tuitop check``, the pool's heartbeat) to say, not for the
  unit's state.
* ``STATUS=`` a short line (``3/3 workers, 12 waiting, redis ok``), sent only when it
  changes; the queue's depth is sampled every ``SAMPLE_EVERY`` seconds.
* ``RELOADING=1`` with ``MONOTONIC_USEC=`` (which ``Type=notify-reload`` requires), then
  ``READY=1``, around each reload of the config files (SIGHUP, a save), once ready.
* ``STOPPING=1`` when the pool starts draining.
* ``WATCHDOG=1`` from the loop itself every quarter of ``WatchdogSec`` (systemd asks for
  at least every half; the quarter leaves room for a slow turn): a loop that stops
  turning stops the pings, and systemd restarts the unit. ``faulthandler`` is on, so
  the SIGABRT systemd sends first writes every thread's stack to the journal: where the
  loop was stuck.
"""

from __future__ import annotations

import faulthandler
import logging
import time
from dataclasses import dataclass

from tuitop.config import DB_QUEUE
from tuitop.pool.configuration import Configuration
from tuitop.pool.link import StoreLink
from tuitop.pool.presence import Presence
from tuitop.pool.workers import WorkerSet
from tuitop.sdnotify import SystemdNotifier, monotonic_usec
from tuitop.worker.status import WorkerState

SAMPLE_EVERY = 2.0
"""Seconds between two samples of the queue's depth for the status line."""
READY_POLL = 0.1
"""How often the loop looks whether the workers registered, until READY is sent."""
PINGS_PER_INTERVAL = 4


@dataclass(frozen=True)
class PoolState:
    """What the status line and the readiness are made of."""

    wanted: int
    running: int
    """Workers not stopping."""
    registered: int
    """Of those, the ones that registered in the store (their first heartbeat written)."""
    left: int = 0
    """Every worker process still there (while stopping: those finishing their job)."""
    store: str = "redis"
    """``redis`` or ``database``; '' when no queue is configured."""
    store_ok: bool = True
    store_tried: bool = True
    """The pool tried to reach the store at least once."""
    name_refused: bool = False
    """Another pool holds this pool's name there."""
    published: bool = True
    """The pool's heartbeat said ``running == wanted`` (the pool is registered)."""
    starts_held: bool = False
    """Workers failed at start: the next start waits (back-off)."""
    waiting: int | None = None
    """Messages waiting in the queue at the last sample (None: not sampled yet)."""
    config_error: bool = False
    stopping: bool = False
    paused: bool = False
    """No worker takes messages (``tuitop ctl pause``): none is to run."""
    held: str = ""
    """Why no worker takes besides a pause (Tuleap upgraded under the pool)."""

    @property
    def takers(self) -> int:
        """The workers to run now: none while paused or held."""
        return 0 if self.paused or self.held else self.wanted


def settled(state: PoolState) -> bool:
    """Whether READY is due: the pool is as ready as it gets without outside help (see
    the module's docstring for why a store away at start counts as settled)."""
    if state.stopping:
        return False
    if not state.store:
        return True
    if not state.store_ok:
        return state.store_tried
    if state.starts_held:
        return True
    return state.published and state.running == state.registered == state.takers


def status_line(state: PoolState) -> str:
    """The one line ``systemctl status`` shows, e.g. ``3/3 workers, 12 waiting, redis ok``."""
    if state.stopping:
        return f"stopping: {state.left} worker(s) finishing their job"
    if not state.store:
        return "no queue configured ($redis_server and database.inc empty): no worker runs"
    workers = f"{state.running}/{state.wanted} workers"
    if state.name_refused:
        parts = [workers, f"another pool holds this pool's name on {state.store}, waiting"]
    elif not state.store_ok:
        parts = [workers, f"{state.store} unreachable, retrying"]
    else:
        parts = [workers]
        if state.waiting is not None:
            parts.append(f"{state.waiting} waiting")
        parts.append(f"{state.store} ok")
    if state.starts_held:
        parts.append("workers fail at start (see the log)")
    if state.paused:
        parts.append("paused ('tuitop ctl resume')")
    if state.held:
        parts.append(state.held)
    if state.config_error:
        parts.append("config error: the last good config stays")
    return ", ".join(parts)


class ServiceNotifier:
    """The pool's side of the conversation with systemd; see the module's docstring.

    Made before any worker starts (it takes the variables out of the environment the
    workers inherit). Never raises: a notification that cannot be sent is logged once
    until one goes through again, and the pool runs on.
    """

    def __init__(
        self,
        config: Configuration,
        workers: WorkerSet,
        link: StoreLink,
        presence: Presence,
        logger: logging.Logger,
    ) -> None:
        self.config = config
        self.workers = workers
        self.link = link
        self.presence = presence
        self.logger = logger
        self.ready = False
        self._stopping = False
        self._reloading = False
        self._status = ""
        self._waiting: int | None = None
        self._sampled_at = float("-inf")
        self._next_ping = 0.0
        self._failing = False
        try:
            self.systemd = SystemdNotifier.from_environment()
        except ValueError as error:
            logger.warning("systemd: %s; no notification is sent", error)
            self.systemd = None
        self._ping_every: float | None = None
        if self.systemd is not None:
            watchdog = self.systemd.watchdog
            if watchdog is not None:
                self._ping_every = watchdog / PINGS_PER_INTERVAL
                faulthandler.enable(all_threads=True)
            logger.info(
                "systemd: notifying %s%s",
                self.systemd.where,
                f", watchdog every {watchdog:g} s" if watchdog else "",
            )

    # --- what the loop calls ---------------------------------------------------------------

    def turn(self) -> None:
        """After each turn of the loop: the watchdog's ping when due, READY once settled,
        the status line when it changed."""
        if self.systemd is None:
            return
        now = time.monotonic()
        fields: dict[str, str] = {}
        if self._ping_every is not None and now >= self._next_ping:
            fields["WATCHDOG"] = "1"
            self._next_ping = now + self._ping_every
        state = self._state(now)
        if not self.ready and settled(state):
            self.ready = True
            fields["READY"] = "1"
            self.logger.info("systemd: ready (%s)", status_line(state))
        line = status_line(state)
        if not self.ready and not self._stopping:
            line = f"starting: {line}"
        if line != self._status:
            fields["STATUS"] = self._status = line
        if fields:
            self._send(fields)

    def cap_sleep(self, timeout: float) -> float:
        """``timeout``, shortened so that the loop turns when the next ping is due (and
        often, until READY is sent)."""
        if self.systemd is None:
            return timeout
        if not self.ready and not self._stopping:
            timeout = min(timeout, READY_POLL)
        if self._ping_every is not None:
            timeout = min(timeout, max(self._next_ping - time.monotonic(), 0.0))
        return timeout

    def reloading(self) -> None:
        """A reload of the config files starts (``RELOADING=1``); nothing before READY."""
        if self.systemd is None or not self.ready or self._stopping:
            return
        self._reloading = True
        self._send(
            {
                "RELOADING": "1",
                "MONOTONIC_USEC": str(monotonic_usec()),
                "STATUS": "reloading the configuration",
            }
        )
        self._status = ""

    def reloaded(self) -> None:
        """The reload is done (applied, or refused with the last good config kept)."""
        if self.systemd is None or not self._reloading:
            return
        self._reloading = False
        self._status = status_line(self._state(time.monotonic()))
        self._send({"READY": "1", "STATUS": self._status})

    def stopping(self) -> None:
        """The pool starts draining (``STOPPING=1``)."""
        if self.systemd is None or self._stopping:
            return
        self._stopping = True
        self._status = status_line(self._state(time.monotonic()))
        self._send({"STOPPING": "1", "STATUS": self._status})

    # --- inside ----------------------------------------------------------------------------

    def _state(self, now: float) -> PoolState:
        settings = self.config.settings
        store = settings.store
        active = self.workers.active()
        beat = self.presence.last_beat
        wanted = self.config.wanted
        self._sample(now)
        return PoolState(
            wanted=wanted,
            running=len(active),
            registered=sum(
                1 for r in active.values() if r.status.state in (WorkerState.IDLE, WorkerState.BUSY)
            ),
            left=len(self.workers),
            store=("database" if store.kind == DB_QUEUE else "redis") if store.configured else "",
            store_ok=self.link.ok,
            store_tried=self.link.store is not None,
            name_refused=self.presence.name_refused,
            published=beat is not None and not beat.stopping and beat.running == self.config.takers,
            starts_held=self.workers.next_start_at > now,
            waiting=self._waiting,
            config_error=bool(self.config.error),
            stopping=self._stopping,
            paused=self.config.paused,
            held=self.config.held,
        )

    def _sample(self, now: float) -> None:
        """The queue's depth, every ``SAMPLE_EVERY`` s while the store answers (a store
        that fails here is the loop's to notice at its next turn)."""
        link = self.link
        if now - self._sampled_at < SAMPLE_EVERY or not link.ok or link.store is None:
            return
        self._sampled_at = now
        try:
            self._waiting, _ = link.store.holds()
        except Exception as error:  # a sample is worth no risk to the loop: unknown
            self.logger.debug("systemd: no sample of the queue's depth: %s", error)
            self._waiting = None

    def _send(self, fields: dict[str, str]) -> None:
        assert self.systemd is not None
        try:
            self.systemd.send(fields)
        except OSError as error:
            if not self._failing:
                self.logger.warning(
                    "systemd: cannot notify %s (%s); the pool runs on",
                    self.systemd.where,
                    error.strerror or error,
                )
            self._failing = True
            return
        self._failing = False

    def close(self) -> None:
        if self.systemd is not None:
            self.systemd.close()
