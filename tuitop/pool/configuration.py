"""The configuration in force in a pool, and how it changes: a reload, a session's count.

A config that does not load is logged with its place and kept as ``error`` for the views;
the one in force stays. Each change taken is logged on one line at warning level, so that
it shows under the default ``$sys_logger_level`` too: an admin who saved a file wants to
see it taken. The worker count can be changed for the session (SIGTTIN/SIGTTOU, the UI's
``+``/``-``); the files win again at their next successful load.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from tuitop.config import MAX_WORKERS, ConfigError, Settings
from tuitop.lanes import LaneSet
from tuitop.log import sync_level
from tuitop.pool.plan import ConfigChange, config_change


class Configuration:
    """``settings`` in force, with ``level`` (shared with the workers) kept in step."""

    def __init__(
        self,
        settings: Settings,
        load: Callable[[], Settings] | None,
        level: Any,
        logger: logging.Logger,
    ) -> None:
        """``load`` reads the config files again (raises ConfigError); None: never."""
        self.settings = settings
        self._load = load
        self.level = level
        self.logger = logger
        self.error = ""
        """The error of the last load that failed ('' once a good config loaded)."""
        self.loaded_at = time.time()
        self.override: int | None = None
        """The worker count set for this session, until the next load."""
        self.paused = False
        """No worker takes messages (``tuitop ctl pause``) until resumed; a reload keeps it."""
        self.paused_lanes: set[str] = set()
        """Lanes none of this pool's workers takes from until resumed (their messages
        wait there: the pool still counts them as served)."""
        self.held = ""
        """Why no worker takes besides a pause ('' when none): Tuleap upgraded under the
        pool, until its sanity check passes (:mod:`.upgrade`)."""

    @property
    def wanted(self) -> int:
        """How many workers the pool runs: the session's count, else the config's (none
        while no queue is configured)."""
        if not self.settings.store.configured:
            return 0
        if self.override is not None:
            return self.override
        return self.settings.backend_workers

    @property
    def takers(self) -> int:
        """The workers to run now: none while paused or held."""
        return 0 if self.paused or self.held else self.wanted

    def staffed_lanes(self) -> LaneSet:
        """The lanes the workers take from: those in force but the paused ones."""
        lanes = self.settings.lanes
        if not self.paused_lanes:
            return lanes
        return LaneSet(tuple(lane for lane in lanes.lanes if lane.name not in self.paused_lanes))

    def scale_by(self, step: int) -> bool:
        """``step`` workers more (+) or fewer (-) for this session; False when nothing
        changes."""
        return self.scale_to(self.wanted + step)

    def scale_to(self, count: int) -> bool:
        """``count`` workers (0 to MAX_WORKERS) for this session; False when nothing
        changes."""
        if not self.settings.store.configured:
            self.logger.warning("No queue is configured: there is no worker to add or remove")
            return False
        before = self.wanted
        after = min(max(count, 0), MAX_WORKERS)
        if after == before:
            return False
        self.override = after
        self.logger.warning(
            "workers %d → %d for this session ($sys_nb_backend_workers = %d comes back at "
            "the next save of the config files)",
            before,
            after,
            self.settings.backend_workers,
        )
        return True

    def reload(self) -> ConfigChange | None:
        """Loads the files again: what changes, or None when they do not load (or there
        is no loader)."""
        if self._load is None:
            return None
        try:
            settings = self._load()
        except ConfigError as error:
            self.error = str(error)
            self.logger.error("config error, the last good configuration stays: %s", error)
            return None
        if self.error:
            self.logger.warning("config: the error is fixed, the files load again")
        self.error = ""
        if self.override is not None:
            self.logger.warning(
                "config: the session's worker count (%d) gives way to the files'", self.override
            )
            self.override = None
        return self.apply(settings)

    def apply(self, settings: Settings) -> ConfigChange:
        """Makes ``settings`` the ones in force; says what changes (the caller acts)."""
        change = config_change(self.settings, settings)
        if change.changed:  # a save that changed nothing (a touch, a SIGHUP) is no new version
            self.loaded_at = time.time()
        self.settings = settings
        self.level.value = int(settings.log_level)
        sync_level(self.logger, self.level)
        for line in change.said:
            self.logger.warning("config: %s", line)
        # A paused lane the files no longer name goes with its pause: nothing could resume
        # it, and the pool would go on counting it as served, its messages held there.
        gone = self.paused_lanes - set(settings.lanes.names)
        if gone:
            self.paused_lanes -= gone
            self.logger.warning(
                "config: lane(s) %s, paused, are no longer in $tuitop_lanes: no longer "
                "paused, their messages go back to the queue",
                ", ".join(sorted(gone)),
            )
        return change
