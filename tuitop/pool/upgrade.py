"""Tuleap upgraded in place under a running pool: take nothing until its sanity check passes.

Tuleap's own workers live and die with Tuleap (``PartOf=tuleap.service``, and each waits
for ``tuleap --version`` and runs ``tuleap sanity-check`` before it starts), so an upgrade
that stops Tuleap first stops them. An upgrade done without that (``dnf upgrade`` with the
services running) replaces Tuleap's PHP under workers that go on taking jobs — and run
them in a half-installed Tuleap. The pool watches Tuleap's ``VERSION`` file: when it
changes (or goes, mid-upgrade), the pool takes nothing more — its workers finish the job
they run and stop, as for a pause — and runs ``tuleap sanity-check`` every few seconds;
once it passes on the new version, workers start again (fresh processes: the new code).

Only where the task command is Tuleap's own (``tuleap queue:task-worker-process``): the
``VERSION`` file is in its directory, the check is its program's ``sanity-check``.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from pathlib import Path

from tuitop.tasks import TULEAP_TASK_ARGV, TaskCommand

CHECK_EVERY = 5.0
"""Seconds between two ``sanity-check`` runs while one fails (Tuleap's units wait 5 s)."""
CHECK_TIMEOUT = 120.0
SETTLE = 2.0
"""Seconds after the file changed before the first check (an upgrade writes many files)."""


def read_version(path: Path) -> str | None:
    """The VERSION file's first line, or None when it cannot be read (mid-upgrade)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[0]
    except (OSError, IndexError):
        return None


class TuleapUpgrade:
    """Watches Tuleap's version under a running pool; :attr:`holding` says why the pool
    takes nothing ('' while it may take). Not thread-safe: the pool's loop only (the
    check runs in a thread of its own, which hands its result over under a lock)."""

    def __init__(
        self, version_file: Path, cli: str, logger: logging.Logger, check_every: float = CHECK_EVERY
    ) -> None:
        self.version_file = version_file
        self.cli = cli
        self.logger = logger
        self.check_every = check_every
        self._version = read_version(version_file)
        self.holding = ""
        """Why no worker takes (an upgrade under way), '' when they may."""
        self._next_check = 0.0
        self._lock = threading.Lock()
        self._running: threading.Thread | None = None
        self._result: tuple[str | None, int, str] | None = None
        """(the version checked, the exit status, its last line of output)."""
        self._said = ""

    @classmethod
    def for_task(cls, task: TaskCommand | None, logger: logging.Logger) -> TuleapUpgrade | None:
        """The watch for a pool whose task command is Tuleap's, else None."""
        if task is None or task.argv[1:] != TULEAP_TASK_ARGV[1:]:
            return None
        return cls(Path(task.directory) / "VERSION", task.argv[0], logger)

    def tick(self, now: float) -> bool:
        """Looks at the version and the check under way; True when the hold just ended
        (the pool reads its config files again: the queue may depend on the version)."""
        version = read_version(self.version_file)
        if version != self._version:
            before, self._version = self._version, version
            self.holding = (
                f"Tuleap upgrade ({before or '?'} → {version or 'under way'}): no job is "
                "taken until 'tuleap sanity-check' passes"
            )
            self.logger.warning(
                "Tuleap's version changed (%s → %s): workers finish their job and stop; "
                "they start again once 'tuleap sanity-check' passes",
                before or "none",
                version or "none yet",
            )
            self._next_check = now + SETTLE
            self._said = ""
        if not self.holding:
            return False
        with self._lock:
            result, self._result = self._result, None
        if result is not None:
            checked, status, last_line = result
            if status == 0 and checked == self._version:
                self.holding = ""
                self.logger.warning(
                    "Tuleap %s: 'tuleap sanity-check' passed; workers take jobs again",
                    checked,
                )
                return True
            said = f"status {status}: {last_line}" if last_line else f"status {status}"
            if said != self._said:  # each new way of failing once, not every 5 s
                self._said = said
                self.logger.warning("'tuleap sanity-check' failed (%s); trying again", said)
            self._next_check = now + self.check_every
        if (self._running is None or not self._running.is_alive()) and now >= self._next_check:
            self._next_check = now + self.check_every
            self._running = threading.Thread(
                target=self._check, args=(self._version,), name="sanity-check", daemon=True
            )
            self._running.start()
        return False

    def _check(self, version: str | None) -> None:
        try:
            done = subprocess.run(
                [self.cli, "sanity-check"],
                capture_output=True,
                cwd=self.version_file.parent,
                timeout=CHECK_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
            output = (done.stdout + done.stderr).decode("utf-8", "replace").strip()
            result = (version, done.returncode, output.splitlines()[-1][:300] if output else "")
        except (OSError, subprocess.TimeoutExpired) as error:
            result = (version, -1, str(error)[:300])
        with self._lock:
            self._result = result
