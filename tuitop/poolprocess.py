"""The pool run behind the terminal UI, as a child process: ``tuitop ... --no-ui``.

Textual and the supervisor both want the main thread (one for the terminal, the other for
its signal handlers), so the UI runs the very daemon an operator would run headless, in a
session of its own (a closed terminal's SIGHUP is not a reload, Ctrl-C in the UI is not a
cold stop) and told to stop warm if the UI dies (``TUITOP_UI_PID``). Its log lines, which
it writes on stderr, are kept for the UI's log panel; signals drive it as they drive the
daemon: SIGTERM warm stop (twice: cold), SIGTTIN/SIGTTOU one worker more/fewer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence

UI_PID_VARIABLE = "TUITOP_UI_PID"
KEPT_LINES = 2000


class PoolProcess:
    """One child pool; ``start()`` it, read its log, signal it, wait for it."""

    def __init__(self, argv: Sequence[str]) -> None:
        """``argv``: the ``tuitop`` options of the pool (``--no-ui`` is added)."""
        self.argv = [sys.executable, "-m", "tuitop", *argv, "--no-ui"]
        self._process: subprocess.Popen[bytes] | None = None
        self._lines: deque[str] = deque(maxlen=KEPT_LINES)
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self.stop_requests = 0

    def start(self) -> PoolProcess:
        environment = dict(os.environ, **{UI_PID_VARIABLE: str(os.getpid())})
        self._process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=environment,
        )
        self._reader = threading.Thread(target=self._read, name="pool-log", daemon=True)
        self._reader.start()
        return self

    @property
    def pid(self) -> int:
        return self._process.pid if self._process else 0

    @property
    def returncode(self) -> int | None:
        """None while it runs; its exit code once it ended."""
        return None if self._process is None else self._process.poll()

    def read_lines(self) -> list[str]:
        """The log lines written since the last call (at most the last 2000)."""
        with self._lock:
            lines = list(self._lines)
            self._lines.clear()
        return lines

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self._lines.append(line)

    def _signal(self, signum: int) -> bool:
        if self.returncode is not None or self._process is None:
            return False
        try:
            os.kill(self._process.pid, signum)
        except ProcessLookupError:
            return False
        return True

    def more_workers(self) -> bool:
        return self._signal(signal.SIGTTIN)

    def fewer_workers(self) -> bool:
        return self._signal(signal.SIGTTOU)

    def stop(self) -> None:
        """A warm stop (running jobs finish); a second call stops it cold."""
        if self._signal(signal.SIGTERM):
            self.stop_requests += 1

    def wait(self, timeout: float | None = None) -> int | None:
        """Waits for the end; the exit code, or None if it still runs after ``timeout``."""
        if self._process is None:
            return None
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        if self._reader is not None:
            self._reader.join(timeout=2)
        return code


def follow_parent_ui() -> None:
    """In the child: stop warm (SIGTERM) when the UI that started it dies."""
    from tuitop.osutil import set_parent_death_signal

    ui_pid = os.environ.pop(UI_PID_VARIABLE, "")
    if not ui_pid.isdigit():
        return
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != int(ui_pid):  # it died before we asked
        os.kill(os.getpid(), signal.SIGTERM)
