"""The pool's arbiter: one loop that records signals, waits, and has the parts act.

gunicorn's arbiter in miniature. Signal handlers only record the signal (and wake the loop
through a pipe); each turn of the loop then, in order: checks the store (:mod:`.link`, and the
pool's name, :mod:`.presence`), reaps workers that exited and has what they held recovered
at once (:mod:`.workers`, :mod:`.recovery`), kills workers past the time limit, publishes
the pool's heartbeat, moves due retries back to the queue, recovers the lists of workers
anywhere whose heartbeat expired, starts or stops workers to match the wanted count
(:mod:`.plan`) — then sleeps until the next event (a signal, a worker exiting, a retry
falling due, a byte on the UI's control pipe, a command in its mailbox (:mod:`.mailbox`),
or the next tick), and handles the signals.
Each turn ends by telling systemd how the pool stands (:mod:`.service`: readiness, a status
line, the watchdog's ping), so a loop that stops turning stops the pings.

Stopping is the same loop in its draining mode: no worker starts, no lane is served, the
heartbeat says ``stopping`` to its end. Warm first (SIGTERM: each worker finishes its job
and leaves), cold on a second signal or after the grace period (SIGKILL; what the killed
workers held is recovered).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

from setproctitle import setproctitle

from tuitop import control
from tuitop.backends.base import MailboxWatch, PoolStore, TimedOut, Watch
from tuitop.backends.errors import StoreError
from tuitop.config import DB_QUEUE, Settings
from tuitop.lanes import DEFAULT_LANE, Staffing
from tuitop.log import reopen_log_files, setup_logging
from tuitop.pool.configuration import Configuration
from tuitop.pool.exporter import open_metrics
from tuitop.pool.link import StoreLink
from tuitop.pool.options import PoolOptions
from tuitop.pool.plan import ConfigChange, Seat, free_slots, plan_scale
from tuitop.pool.presence import Presence
from tuitop.pool.recovery import Recovery
from tuitop.pool.service import ServiceNotifier
from tuitop.pool.upgrade import TuleapUpgrade
from tuitop.pool.wakeups import Wakeups
from tuitop.pool.workers import WorkerSet, new_context
from tuitop.watch import ConfigWatcher

COMMANDS_PER_TICK = 16
"""Commands read from the pool's mailbox a tick: a flood of them cannot stall the loop."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SCALE_SIGNALS: dict[int, int] = {signal.SIGTTIN: +1, signal.SIGTTOU: -1}
"""gunicorn's convention: one more worker, one fewer, for this session."""
REOPEN_SIGNAL = signal.SIGUSR1
"""logrotate's ``postrotate``: the pool opens the worker_log again at once (each worker
follows a moved file by itself: SIGUSR1 is its stack dump, :mod:`.stacks`)."""


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
        self.options = options
        self._watch = tuple(watch) if reload is not None else ()
        self._reload_requested = False
        self._outdated: dict[int, str] = {}
        """Slots whose worker is to be replaced (rolling, one at a time), and why."""
        context = new_context()
        level: Any = context.RawValue("i", int(settings.log_level))
        self.logger = setup_logging(
            log_file=options.log_file,
            to_stderr=options.log_to_stderr,
            level=level,
            secrets=lambda: self.config.settings.secrets(),
        )
        self.config = Configuration(settings, reload, level, self.logger)
        self.upgrade = TuleapUpgrade.for_task(options.task, self.logger)
        self.metrics = open_metrics(options.metrics, options.pool_name, self.logger)
        self.options = options = self.metrics.for_workers(options)
        self.workers = WorkerSet(options, context, level, self.logger)
        self.link = StoreLink(options.pool_name, options.retry, self.logger)
        self.presence = Presence(self.link, options.pool_name, options.heartbeat_ttl, self.logger)
        self.recovery = Recovery(
            self.link,
            heartbeat_ttl=options.heartbeat_ttl,
            tuleap_hold_limit=options.tuleap_hold_limit,
            logger=self.logger,
            counts=self.metrics.counts,
        )
        self.service = ServiceNotifier(
            self.config, self.workers, self.link, self.presence, self.logger
        )
        """systemd's notifications; made before any worker starts (see its module)."""
        self.wakeups = Wakeups(options.control_fd)
        self.doorbell: Watch | None = None
        """Rings idle workers when the queue changed, for a store whose workers cannot
        wait on it (the database); made for the store in force (``_doorbell_of``)."""
        self._doorbell_of: PoolStore | None = None
        self._mailbox: MailboxWatch | None = None
        """Watches the mailbox on the store in force, where it can be waited on."""
        self._mailbox_of: PoolStore | None = None
        self._next_due: float | None = None
        """When the next retry is due on this host's monotonic clock (from the store's "in so
        many seconds", as last read)."""
        self._retried_seen = 0.0
        """Its workers' count of retries scheduled when it last read ``_next_due``."""
        self._stop_signals = 0
        self._drain_until: float | None = None
        """Set once the pool stops: the end of the grace period (monotonic)."""
        self.metrics.serve(self.workers, self.config, self.link)  # MetricsError: port taken

    @property
    def draining(self) -> bool:
        """The pool is stopping: its workers finish their jobs, none starts."""
        return self._drain_until is not None

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        setproctitle(f"tuitop: pool {self.options.pool_name}")
        self.wakeups.install((*STOP_SIGNALS, signal.SIGHUP, *SCALE_SIGNALS, REOPEN_SIGNAL))
        self._say_starting()
        watcher = None
        if self._watch:
            watcher = ConfigWatcher(self._watch, self.request_reload, self.logger)
            watcher.start()
        try:
            while not self._done():
                self._cycle()
                self.service.turn()
                self._sleep()
                self._handle_wakeups()
            self._finish()
        finally:
            if watcher is not None:
                watcher.stop()
            if self.doorbell is not None:
                self.doorbell.stop()
            if self._mailbox is not None:
                self._mailbox.stop()
            self.wakeups.uninstall()
            self.presence.release()
            self.workers.close()
            self.service.close()
            self.metrics.close()
        return 0

    def _done(self) -> bool:
        """Draining, and no worker is left, the grace period is over, or a second stop
        signal came (two, even back to back, mean "now")."""
        if self._drain_until is None:
            return False
        return not self.workers or time.monotonic() >= self._drain_until or self._stop_signals >= 2

    def _cycle(self) -> None:
        try:
            self._cycle_once()
        except Exception:
            # A bug must not take the pool (and its running jobs) down: log it, go on.
            self.logger.exception("Unexpected error in the pool's loop")

    def _cycle_once(self) -> None:
        self._check_store()
        # Right after: the store the check just reached has its doorbell in this tick,
        # not the next (idle workers would wait a tick for their first message).
        self._tend_doorbell()
        self._watch_upgrade()
        self._reap()
        self.workers.enforce_time_limit()
        self._reap()  # a worker just killed for its time limit frees its slot for the next
        if not self.draining:
            # Before the heartbeat: a worker that just left (--max-messages, a crash) is
            # replaced in the beat that no longer counts it, never seen short by a check.
            self._scale()
        link = self.link
        if link.ok and link.store is not None:
            try:
                retried = self.workers.retries_scheduled() + self.recovery.requeued
                published = self._publish()
                if published or retried != self._retried_seen:
                    # At the heartbeat's pace (not every tick): an idle pool costs the
                    # store a few commands a second, whatever its number of workers; and
                    # when one of its workers scheduled a retry (due maybe before the
                    # next heartbeat).
                    self._retried_seen = retried
                    self._next_due = _due_at(link.store.due_in())
                if self._mailbox_due(link.store, published):
                    self._obey(link.store)
                self._move_due()
                if link.ok and link.store is not None:
                    self.recovery.scan(self._our_ids())
            except StoreError as error:
                link.trouble(error)
        if not self.draining:
            self._scale()  # what a command just asked, at once
        link.tend_left(
            self.config.settings.store,
            lambda where: any(record.store == where for record in self.workers),
            self.presence.release_lanes,
        )

    def _sleep(self) -> None:
        """Until the next tick, the next start allowed, the end of the grace period or the
        next retry due, whichever comes first — or a wake-up."""
        now = time.monotonic()
        timeout = self.options.tick
        if self.workers.next_start_at > now:
            timeout = min(timeout, self.workers.next_start_at - now)
        if self._drain_until is not None:
            timeout = min(timeout, self._drain_until - now)
        if self.link.ok and self._next_due is not None:
            timeout = min(timeout, self._next_due - now)
        self.wakeups.wait(self.workers.sentinels(), max(self.service.cap_sleep(timeout), 0.0))

    def _handle_wakeups(self) -> None:
        wakeups = self.wakeups
        while wakeups.signals:
            signum = wakeups.signals.pop(0)
            if signum in STOP_SIGNALS:
                self._stop_signals += 1
                self._begin_draining()
            elif signum == signal.SIGHUP and not self.draining:
                self.logger.info("SIGHUP: reloading the configuration")
                self.reload()
            elif signum in SCALE_SIGNALS and not self.draining:
                self.scale_by(SCALE_SIGNALS[signum])
            elif signum == REOPEN_SIGNAL:
                reopen_log_files(self.logger)
        while wakeups.steps:
            step = wakeups.steps.pop(0)
            if not self.draining:
                self.scale_by(step)
        if wakeups.control_closed and not self.draining:
            self.logger.warning("The UI that ran this pool is gone: stopping warm")
            self._begin_draining()
        if self._reload_requested and not self.draining:
            self._reload_requested = False
            self.reload()

    def _watch_upgrade(self) -> None:
        """Tuleap upgraded under the pool: no worker takes until its sanity check passes
        (:mod:`.upgrade`); then the config files are read again (the queue may follow
        Tuleap's version)."""
        if self.upgrade is None:
            return
        ended = self.upgrade.tick(time.monotonic())
        self.config.held = self.upgrade.holding
        if ended and not self.draining:
            self.reload()

    def _tend_doorbell(self) -> None:
        """The doorbell of the store in force, if it has one (made when the config names
        another store; it looks only while that store is in force and answers)."""
        store = self.link.store
        if store is None or store is self._doorbell_of:
            return
        if self.doorbell is not None:
            self.doorbell.stop()
        self._doorbell_of = store
        self.doorbell = store.doorbell(
            lambda: self.link.ok and self.link.store is store,
            self.workers.any_idle,
            self.workers.ring_idle,
            self.logger,
            self.options.doorbell_interval,
        )
        if self.doorbell is not None:
            self.doorbell.start()

    def _our_ids(self) -> set[str]:
        return {record.worker_id for record in self.workers}

    def _say_starting(self) -> None:
        settings = self.config.settings
        if settings.store.configured:
            self.logger.info(
                "Pool %s starting: %d worker(s) wanted, %s at %s",
                self.options.pool_name,
                settings.backend_workers,
                f"{settings.store.noun} queue" if settings.queue == "db" else "Redis",
                settings.store.address,
            )
        else:
            self.logger.warning(
                "Redis is not configured ($redis_server is empty), nor is a database: no "
                "worker runs; waiting for the configuration to change"
            )
        if self.options.task is not None:
            self.logger.info("Tasks run as %s", self.options.task.describe())
            self.workers.sweep_leftovers()

    # --- what an operator asks -------------------------------------------------------------

    def scale_by(self, step: int) -> None:
        """One worker more or fewer for this session (:meth:`Configuration.scale_by`)."""
        if self.config.scale_by(step):
            self.wakeups.wake()

    def request_reload(self) -> None:
        """Asks the loop to reload soon; safe from any thread (the watcher's)."""
        self._reload_requested = True
        self.wakeups.wake()

    def reload(self) -> None:
        """Reads the config files again and applies what changed; a config that does not
        load changes nothing but the error the views show."""
        self.service.reloading()
        change = self.config.reload()
        self.metrics.config_loaded(change is not None, refused=bool(self.config.error))
        if change is None or change.changed:
            self.presence.config_published = False  # a new version, or a new error
        if change is not None:
            self._take(change)
        self.service.reloaded()

    def apply(self, settings: Settings) -> None:
        """Makes ``settings`` the ones in force; the loop does the rest."""
        change = self.config.apply(settings)
        if change.changed:
            self.presence.config_published = False
        self._take(change)

    def _take(self, change: ConfigChange) -> None:
        if change.leave_store:
            # Its name is given up there; its client kept while workers still serve it.
            self.presence.release()
            self.link.leave()
            self.presence.config_published = False
        if change.replace_workers:
            self._outdated = dict.fromkeys(self.workers.records, "its settings are outdated")

    # --- commands from anywhere (tuitop ctl, tuitop top) -----------------------------------

    def _mailbox_due(self, store: PoolStore, published: bool) -> bool:
        """Whether to read the mailbox now: a command came (the watch rang), or at the
        heartbeat's pace whatever it says; every tick while it does not watch (the
        database, a Redis it cannot reach on its own connection)."""
        if store is not self._mailbox_of:
            if self._mailbox is not None:
                self._mailbox.stop()
            self._mailbox_of = store
            self._mailbox = store.watch_mailbox(
                self.options.pool_name, self.wakeups.wake, self.logger
            )
            if self._mailbox is not None:
                self._mailbox.start()
        watch = self._mailbox
        return watch is None or published or watch.rung or not watch.connected

    def _obey(self, store: PoolStore) -> None:
        """Carries out the commands sent to this pool since it last read them, logs who asked
        what, and replies (:mod:`tuitop.control`). Every command taken is carried out
        before the first reply is written: a store that fails then loses replies, never
        an order."""
        # The database drops rows older than a minute by its own clock; a Redis mailbox
        # lives as long as commands keep coming: there, the time the sender stamped by
        # Redis' clock says, against Redis' clock (the hosts' clocks may differ).
        commands = store.take_commands(self.options.pool_name, COMMANDS_PER_TICK)
        if self._mailbox is not None:
            self._mailbox.read()  # read: it may block again (more left: it rings at once)
        now = store.clock() if commands and store.settings.kind != DB_QUEUE else None
        replies = [self._answer(raw, now) for raw in commands]
        for command_id, reply in replies:
            if command_id:
                store.reply(command_id, reply.encode())

    def _answer(self, raw: bytes, now: float | None) -> tuple[str, control.Reply]:
        """Reads and carries out one command (unless it expired by the store's clock
        ``now``; None: not judged here): (its id, or '' for none; the reply)."""
        name = self.options.pool_name
        try:
            command = control.parse(raw)
            if now is not None and control.expired(command, now):
                raise control.CommandError(
                    f"{command.describe()} sent {now - command.at:.0f} s ago expired unread"
                )
            if command.to and command.to != self.presence.token:
                raise control.CommandError(
                    f"{command.describe()} was sent to another run of pool {name} "
                    f"({command.to}): not obeyed"
                )
        except control.CommandError as error:
            self.logger.warning("A command sent to this pool is refused: %s", error)
            return control.reply_to(raw), control.Reply(name, False, str(error), time.time())
        ok, said = self._carry_out(command)
        self.logger.warning(
            "Command from %s: %s: %s%s",
            command.by or "someone unnamed",
            command.describe(),
            "" if ok else "refused: ",
            said,
        )
        return command.id, control.Reply(name, ok, said, time.time())

    def _carry_out(self, command: control.Command) -> tuple[bool, str]:
        """Does what ``command`` asks: (done, what was done or why not)."""
        config = self.config
        if self.draining:
            return False, "the pool is stopping"
        action, lane = command.action, command.lane
        if action in ("scale", "workers"):
            before = config.wanted
            assert command.value is not None  # control.check
            target = before + command.value if action == "scale" else command.value
            if not config.scale_to(target):
                return True, f"workers stay {before}"
            self.wakeups.wake()
            return True, f"workers {before} → {config.wanted} for this session"
        if action in ("pause", "resume") and lane:
            if lane not in config.settings.lanes.names[1:]:
                if lane == DEFAULT_LANE:
                    return False, f"{lane} is the default lane: pause the pool instead"
                return False, f"this pool has no lane {lane} ($tuitop_lanes)"
            if (lane in config.paused_lanes) == (action == "pause"):
                return True, f"lane {lane} was already {action}d"
            if action == "pause":
                config.paused_lanes.add(lane)
            else:
                config.paused_lanes.discard(lane)
            self.wakeups.wake()
            what = "waits" if action == "pause" else "is taken from again"
            return True, f"lane {lane} {what} (its workers are replaced one by one)"
        if action in ("pause", "resume"):
            if config.paused == (action == "pause"):
                return True, f"the pool was already {action}d"
            config.paused = action == "pause"
            self.wakeups.wake()
            if config.paused:
                return True, "paused: its workers finish their job and stop, none starts"
            return True, f"resumed: {config.wanted} worker(s) start"
        if action == "reload":
            self.reload()
            if config.error:
                return False, f"the files do not load, the last good config stays: {config.error}"
            return True, "the config files were read again"
        self._begin_draining()
        return True, "stopping warm: running jobs finish, then the pool exits"

    # --- the store, the name, the heartbeat ------------------------------------------------

    def _check_store(self) -> None:
        link = self.link
        if not link.due(self.config.settings.store):
            return
        try:
            link.open(self.config.settings.store)
            claimed = self.presence.claim()
        except StoreError as error:
            link.trouble(error)
            return
        if not claimed:
            self._name_lost()
            return
        link.up()
        # It may have lost what it held (a restart without persistence): every worker
        # writes its hash again, the heartbeat goes at once.
        self.presence.forget_published()
        self.workers.ask_rebeat()
        try:
            assert link.store is not None
            for lane in link.store.list_forgotten_lanes():
                self.logger.warning(
                    "Lane %s had messages no pool listed (left by an older tuitop): listed "
                    "now, moved back unless a pool serves it",
                    lane,
                )
            self.recovery.scan(self._our_ids(), force=True)
        except StoreError as error:
            link.trouble(error)

    def _name_lost(self) -> None:
        # Workers started under the name (before a partition, say) must not serve on under
        # it beside the pool that holds it now: their ids could meet that pool's.
        self.link.hold_off(self.presence.ttl)
        self.workers.stop_all("the pool lost its name")

    def _publish(self) -> bool:
        """The heartbeat, listing the workers alive: while draining, ``stopping`` and no
        lane served (two pools stopping together must not each count on the other to keep
        a lane). Whether it was written now (else it was not due)."""
        active = self.workers.active()
        served = {lane for record in active.values() for lane in record.serves}
        alive = self.workers.listed(self.presence.ttl)
        # What each listing stands on: the worker's last sign of life, not this write (a
        # frozen worker stays listed up to a TTL after it; its list may be recovered as
        # soon as the TTL is past, so that is all the write vouches for).
        seen = [record.status.alive_at for record in alive]
        before = self.presence.published_at
        kept = self.presence.publish(
            self.config,
            running=len(active),
            # A paused lane's messages wait for it: no other pool may move them back.
            served=(served | self.config.paused_lanes) - {DEFAULT_LANE},
            stopping=self.draining,
            workers=tuple(record.worker_id for record in alive),
        )
        if not kept:
            self._name_lost()
        written = self.presence.published_at != before
        if written and kept:
            for record, alive_at in zip(alive, seen, strict=True):
                record.status.listed_at = min(self.presence.published_at, alive_at)
        return written

    def _move_due(self) -> None:
        """Moves the retries due back to the queue, when one is (``_next_due`` is read
        with each heartbeat, and after each move)."""
        store = self.link.store
        if store is None or self._next_due is None or self._next_due > time.monotonic():
            return
        store.move_due()
        self._next_due = _due_at(store.due_in())

    # --- workers ---------------------------------------------------------------------------

    def _scale(self) -> None:
        workers, settings = self.workers, self.config.settings
        staffing = Staffing(self.config.staffed_lanes(), self.config.takers)
        plan = plan_scale(
            staffing,
            {slot: Seat(r.lane, r.serves, r.idle) for slot, r in workers.active().items()},
            self._outdated,
            replacing=any(record.stopping and not record.kill_reason for record in workers),
            can_start=self.link.ok and time.monotonic() >= workers.next_start_at,
            fewer_because="Tuleap is being upgraded"
            if self.config.held
            else "the pool is paused"
            if self.config.paused
            else "the pool is scaled down",
        )
        for slot, why in plan.stop:
            workers.stop(workers.records[slot], why)
        self._outdated = plan.outdated
        for slot, lane in zip(
            free_slots(set(workers.records), len(plan.start)), plan.start, strict=True
        ):
            serves = staffing.serves(lane)
            workers.start(slot, settings, lane, serves)
            self.presence.served_lanes.update(set(serves) - {DEFAULT_LANE})

    def _reap(self) -> None:
        for ended in self.workers.reap():
            record = ended.record
            self.metrics.worker_gone(record.process.pid)
            reason = f"worker {record.worker_id} {ended.how}"
            if record.kill_reason:
                reason += f": {record.kill_reason}"
            store = self.link.store_for(record.store)
            if store is not None and store is not self.link.store:
                self.recovery.recover_left_behind(store, record.worker_id, reason)
            else:
                settings = self.config.settings
                self.recovery.recover(
                    record.worker_id,
                    reason,
                    timed_out=TimedOut(record.timed_out_job, settings.retries_past_time_limit)
                    if record.timed_out
                    else None,
                    traceback=record.traceback,
                )

    # --- stopping --------------------------------------------------------------------------

    def _begin_draining(self) -> None:
        if self.draining:
            return
        self._drain_until = time.monotonic() + self.options.grace_period
        self.service.stopping()
        if self.workers:
            self.logger.info(
                "Shutting down: %d worker(s) finish their current job (up to %.0f s; "
                "signal again to stop at once)",
                len(self.workers),
                self.options.grace_period,
            )
        self.workers.stop_all("the pool is shutting down")
        if self.link.ok:
            try:
                self._publish()  # at once: other pools must not count on its lanes
            except StoreError as error:
                self.link.trouble(error)

    def _finish(self) -> None:
        """The end of draining: the workers left are killed (what they held recovered),
        the lanes no other pool serves go back to Tuleap's list."""
        workers = self.workers
        if workers:
            why = "a second signal" if self._stop_signals >= 2 else "the grace period"
            self.logger.warning(
                "Killing %d worker(s) after %s; what they held is recovered", len(workers), why
            )
            for record in workers:
                workers.kill(record, f"killed at shutdown after {why}")
            for record in workers:
                record.process.join(timeout=5)
            self._reap()
        served = self.presence.served_lanes
        if self.link.ok and self.presence.owns_name and self.link.store is not None:
            self.presence.release_lanes(self.link.store)
        elif served:
            why = (
                "the store does not answer"
                if self.presence.owns_name
                else "this pool lost its name"
            )
            self.logger.warning(
                "%s: lane(s) %s stay where they are (the next pool to start moves back "
                "what no pool serves)",
                why,
                ", ".join(sorted(served)),
            )
        self.logger.info("Pool %s stopped", self.options.pool_name)


def _due_at(due_in: float | None) -> float | None:
    """When a retry falls due on this host's monotonic clock, from the store's "in so many
    seconds" (by its own clock: the host's wall clock may be hours off from it)."""
    return None if due_in is None else time.monotonic() + due_in
