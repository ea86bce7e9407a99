"""What wakes the pool's loop, and what it brings: signals, the UI's control pipe, a thread.

Signal handlers only record the signal and write a byte on a pipe (``set_wakeup_fd``);
the loop reads them when it is ready, so no handler ever runs pool code in the middle of
another step. The UI that runs a pool writes ``+``/``-`` on a control pipe, one byte a
key press (signals of one kind sent close together merge; bytes do not), and its end of
file means the UI is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable
from multiprocessing.connection import wait
from types import FrameType
from typing import Any

CONTROL_STEPS = {ord("+"): +1, ord("-"): -1}
"""The bytes of the UI's control pipe: one worker more, one fewer."""


class Wakeups:
    """The loop's one place to wait, and what came while it waited."""

    def __init__(self, control_fd: int | None) -> None:
        self._read, self._write = os.pipe()
        self.signals: list[int] = []
        """Signals received, oldest first (the loop pops them)."""
        self.steps: list[int] = []
        """``+1``/``-1`` for each byte the UI wrote (the loop pops them)."""
        self.control_closed = False
        """The UI's end of the control pipe is closed: the UI is gone, however it died."""
        self._control: int | None = None
        if control_fd is not None:
            # A private copy (not inherited), and /dev/null in its place: the forkserver,
            # the workers and what their handlers run must not read, hold or block on it.
            self._control = os.dup(control_fd)
            os.set_blocking(self._control, False)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, control_fd)
            os.close(devnull)

    def install(self, signums: Iterable[int]) -> None:
        """Records ``signums`` from now on (main thread only)."""
        os.set_blocking(self._write, False)
        os.set_blocking(self._read, False)
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        for signum in signums:
            signal.signal(signum, self._record)

    def uninstall(self) -> None:
        signal.set_wakeup_fd(-1)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)

    def wake(self) -> None:
        """Ends the current or next wait at once; safe from any thread."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._write, b"r")

    def wait(self, sentinels: Iterable[Any], timeout: float) -> None:
        """Waits up to ``timeout`` s for a wake-up, a signal, a byte of the UI, or one of
        ``sentinels`` (a worker process exiting)."""
        waitables: list[Any] = [self._read, *sentinels]
        if self._control is not None:
            waitables.append(self._control)
        ready = wait(waitables, timeout=max(timeout, 0.0))
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 512):
                pass
        if self._control is not None and self._control in ready:
            self._read_control()

    def _read_control(self) -> None:
        assert self._control is not None
        try:
            data = os.read(self._control, 512)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            os.close(self._control)
            self._control = None
            self.control_closed = True
            return
        self.steps.extend(CONTROL_STEPS[byte] for byte in data if byte in CONTROL_STEPS)
