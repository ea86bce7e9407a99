"""The pool run behind the terminal UI, as a child process: ``tuitop ... --no-ui``.

Textual and the supervisor both want the main thread (one for the terminal, the other for
its signal handlers), so the UI runs the very daemon an operator would run headless, in a
session of its own (a closed terminal's SIGHUP is not a reload, Ctrl-C in the UI is not a
cold stop). Its stdin is a control pipe (``--control-stdin``): the UI writes ``+``/``-``
there, one byte a key press, none lost (signals of one kind sent close together merge); when
the UI dies, however, the pipe's end of file stops the pool warm. Its log lines, which it
writes on stderr, are kept for the UI's log panel. SIGTERM stops it warm, a second one cold,
as for the daemon.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence

KEPT_LINES = 2000
CONTROL_OPTION = "--control-stdin"


class PoolProcess:
    """One child pool; ``start()`` it, read its log, scale it, stop it, wait for it."""

    def __init__(self, argv: Sequence[str]) -> None:
        """``argv``: the ``tuitop`` options of the pool (``--no-ui`` and the control pipe
        are added)."""
        self.argv = [sys.executable, "-m", "tuitop", *argv, "--no-ui", CONTROL_OPTION]
        self._process: subprocess.Popen[bytes] | None = None
        self._lines: deque[str] = deque(maxlen=KEPT_LINES)
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self.stop_requests = 0

    def start(self) -> PoolProcess:
        self._process = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
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

    def _control(self, command: bytes) -> bool:
        if self.returncode is not None or self._process is None or self._process.stdin is None:
            return False
        try:
            self._process.stdin.write(command)
            self._process.stdin.flush()
        except (BrokenPipeError, ValueError):
            return False
        return True

    def more_workers(self) -> bool:
        """One worker more for the session; False when the pool is not running."""
        return self._control(b"+")

    def fewer_workers(self) -> bool:
        """One worker fewer for the session; False when the pool is not running."""
        return self._control(b"-")

    def stop(self) -> None:
        """A warm stop (running jobs finish); a second call stops it cold."""
        if self.returncode is not None or self._process is None:
            return
        try:
            os.kill(self._process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
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
        if self._process.stdin is not None:
            self._process.stdin.close()
        return code
