"""Watches the config files and asks for a reload when one is saved.

An admin saves a file in many ways: written in place, written to a temporary file renamed
over the old one (most editors), ``sed -i``, a symlink swapped by a config management tool,
deleted then created again. All of them touch the *directory* entry, so the watcher watches
the directories holding the files (and, for a symlink, the one holding its target) and keeps
the events that name one of them. Bursts of events are coalesced by watchfiles' debounce;
the reload itself reads and parses everything again, and the supervisor applies only a
configuration that loads completely, so a half-written file never takes effect.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import watchfiles

DEBOUNCE_MS = 100
"""Quiet time that ends a burst of events (an editor's save is a few within a millisecond)."""
STEP_MS = 20


def watched_names(paths: Iterable[str]) -> tuple[set[Path], set[Path]]:
    """The directories to watch and the exact paths whose events matter.

    A symlink counts as both itself and what it points to now.
    """
    directories: set[Path] = set()
    names: set[Path] = set()
    for path in paths:
        link = Path(os.path.abspath(path))
        directories.add(link.parent)
        names.add(link)
        target = Path(os.path.realpath(link))
        if target != link:
            directories.add(target.parent)
            names.add(target)
    return directories, names


class ConfigWatcher(threading.Thread):
    """Calls ``on_change`` (from this thread) after any of ``paths`` changed.

    ``on_change`` must be quick and thread-safe: the supervisor's records a flag and wakes
    its loop. Directories that do not exist are skipped (a missing default file).
    """

    def __init__(self, paths: Iterable[str], on_change: Callable[[], None]) -> None:
        super().__init__(name="config-watcher", daemon=True)
        self.paths = list(paths)
        self.on_change = on_change
        self._stop_event = threading.Event()
        self._names: set[Path] = set()

    def run(self) -> None:
        while not self._stop_event.is_set():
            directories, self._names = watched_names(self.paths)
            existing = [d for d in directories if d.is_dir()]
            if not existing:
                self._stop_event.wait(1.0)
                continue
            for changes in watchfiles.watch(
                *existing,
                watch_filter=self._concerns,
                debounce=DEBOUNCE_MS,
                step=STEP_MS,
                stop_event=self._stop_event,
                recursive=False,
                raise_interrupt=False,
                yield_on_timeout=False,
            ):
                if changes:
                    self.on_change()
                    # A symlink may point elsewhere now: watch its new target's directory.
                    if watched_names(self.paths)[0] != directories:
                        break

    def _concerns(self, change: watchfiles.Change, path: str) -> bool:
        candidate = Path(path)
        return candidate in self._names or Path(os.path.realpath(candidate)) in self._names

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
