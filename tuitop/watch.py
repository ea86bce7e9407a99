"""Watches the config files and asks for a reload when one is saved.

An admin saves a file in many ways: written in place, written to a temporary file renamed
over the old one (most editors), ``sed -i``, a symlink swapped by a config management tool,
deleted then created again, a whole directory replaced. The watcher follows the directories
holding the files (and, for a symlink, the one holding its target) with watchfiles, and
every two seconds also compares each file's identity (target, inode, size, mtime) with the
last it saw, a safety net for what no event announces (a directory replaced or a directory
symlink swapped) and the moment to watch directories that appeared since.

A file still being written must not be applied: after a change the watcher waits until the
files' identities hold still for ``SETTLE_SECONDS`` before it asks for a reload. The reload
itself reads and parses everything again, and only a configuration that loads completely is
applied.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import watchfiles

DEBOUNCE_MS = 100
"""Quiet time that ends a burst of events (an editor's save is a few within a millisecond)."""
STEP_MS = 20
POLL_MS = 2000
"""How often the identities are compared even without any event."""
SETTLE_SECONDS = 0.15
"""How long the files must hold still before they are read."""

Fingerprint = tuple[tuple[str, int, int, int] | None, ...]


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


def fingerprint(paths: Sequence[str]) -> Fingerprint:
    """What identifies each file's current content: its target, inode, size and mtime
    (None for a missing file)."""
    result: list[tuple[str, int, int, int] | None] = []
    for path in paths:
        try:
            status = os.stat(path)
        except OSError:
            result.append(None)
            continue
        target = os.path.realpath(path)
        result.append((target, status.st_ino, status.st_size, status.st_mtime_ns))
    return tuple(result)


class ConfigWatcher(threading.Thread):
    """Calls ``on_change`` (from this thread) after any of ``paths`` changed and settled.

    ``on_change`` must be quick and thread-safe: the supervisor's records a flag and wakes
    its loop. The watcher never dies of an error: it logs it and starts over.
    """

    def __init__(
        self,
        paths: Iterable[str],
        on_change: Callable[[], None],
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(name="config-watcher", daemon=True)
        self.paths = list(paths)
        self.on_change = on_change
        self.logger = logger or logging.getLogger("tuitop.watch")
        self._stop_event = threading.Event()
        self._names: set[Path] = set()
        self._seen = fingerprint(self.paths)

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self._watch()
            except Exception as error:  # a vanished directory, the inotify limit ...
                self.logger.warning("config watcher: %s; watching again in 1 s", error)
                self._stop_event.wait(1.0)

    def _watch(self) -> None:
        directories, self._names = watched_names(self.paths)
        existing = [d for d in directories if d.is_dir()]
        if not existing:
            self._stop_event.wait(POLL_MS / 1000)
            self._check(changed=False)
            return
        for changes in watchfiles.watch(
            *existing,
            watch_filter=self._concerns,
            debounce=DEBOUNCE_MS,
            step=STEP_MS,
            stop_event=self._stop_event,
            rust_timeout=POLL_MS,
            yield_on_timeout=True,
            recursive=False,
            raise_interrupt=False,
        ):
            self._check(changed=bool(changes))
            if {d for d in watched_names(self.paths)[0] if d.is_dir()} != set(existing):
                return  # a symlink points elsewhere, a directory came or went: re-arm

    def _check(self, *, changed: bool) -> None:
        current = fingerprint(self.paths)
        if not changed and current == self._seen:
            return
        # Wait until the files hold still: a writer may be halfway through.
        while not self._stop_event.wait(SETTLE_SECONDS):
            settled = fingerprint(self.paths)
            if settled == current:
                break
            current = settled
        self._seen = current
        self.on_change()

    def _concerns(self, change: watchfiles.Change, path: str) -> bool:
        candidate = Path(path)
        return candidate in self._names or Path(os.path.realpath(candidate)) in self._names

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
