"""Small Linux process helpers (no-ops where the platform lacks them)."""

from __future__ import annotations

import ctypes
import ctypes.util
import signal

import psutil

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(signum: int = signal.SIGTERM) -> bool:
    """Asks the kernel to send ``signum`` to this process when its parent dies.

    Returns False where that is not available (not Linux); callers keep their own check.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def process_running(pid: int, create_time: float | None = None) -> bool:
    """True while the process runs: not gone, not a zombie, and (when ``create_time`` is
    given) not another process that got the same pid since."""
    try:
        process = psutil.Process(pid)
        if create_time is not None and abs(process.create_time() - create_time) > 0.01:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
