"""Small Linux process helpers (no-ops where the platform lacks them)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import psutil

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _libc_names() -> Iterator[str | None]:
    yield "libc.so.6"
    # Only when the usual name fails: find_library runs ldconfig (a fork and an exec).
    yield ctypes.util.find_library("c")


@functools.cache
def _prctl() -> Any:
    """libc's prctl, or None. Resolved once: a child between fork and exec may call
    set_parent_death_signal, and must not run ldconfig (find_library's way) there."""
    for name in _libc_names():
        if not name:
            continue
        try:
            return ctypes.CDLL(name, use_errno=True).prctl
        except (OSError, AttributeError):
            continue
    return None


def parent_death_signal_available() -> bool:
    """True where set_parent_death_signal works; resolves it for later calls (a child
    between fork and exec calls it)."""
    return _prctl() is not None


def set_parent_death_signal(signum: int = signal.SIGTERM) -> bool:
    """Asks the kernel to send ``signum`` to this process when its parent dies.

    Returns False where that is not available (not Linux); callers keep their own check.
    """
    prctl = _prctl()
    return prctl is not None and int(prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)) == 0


def become_child_subreaper() -> bool:
    """Makes this process the child subreaper of its descendants (Linux 3.4 and later): a
    descendant whose parent dies is re-parented to the nearest such ancestor instead of
    init, whatever session, group or environment it took on the way — found again as a
    child. The process must then reap what it adopts, pid by pid (``os.waitpid``), or
    they stay zombies. Returns False where that is not available."""
    prctl = _prctl()
    return prctl is not None and int(prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


def child_pids() -> list[int]:
    """The pids of this process's children now, zombies included: read from
    ``/proc/self/task/*/children`` (each thread's own list; no scan of every process on
    the host), or found by psutil where the kernel has no such file."""
    pids: list[int] = []
    lists = glob.glob(f"/proc/{os.getpid()}/task/*/children")
    if not lists:
        return [child.pid for child in psutil.Process().children()]
    for path in lists:
        try:
            with open(path) as children:
                pids.extend(int(pid) for pid in children.read().split())
        except OSError:  # a thread that ended meanwhile
            continue
    return pids


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


class ProcessTree:
    """CPU and memory of a process and of everything it started (a worker and its task
    process tree), measured between two calls to :meth:`measure`."""

    def __init__(self, process: psutil.Process) -> None:
        self.root = process
        self._children: dict[int, psutil.Process] = {}

    def measure(self) -> tuple[float, int]:
        """CPU % since the last call (over the process's life for one not seen before)
        and RSS in bytes, the descendants included; raises psutil.Error when the root is
        gone or not readable."""
        with self.root.oneshot():
            cpu = self.root.cpu_percent()
            rss = int(self.root.memory_info().rss)
            children = self.root.children(recursive=True)
        seen: dict[int, psutil.Process] = {}
        for child in children:
            known = self._children.get(child.pid)
            try:
                if known is not None and known == child:  # same pid and start time
                    child_cpu = known.cpu_percent()
                    child = known
                else:
                    # A first cpu_percent() says 0: use its CPU time over its life so far.
                    child_cpu = child.cpu_percent()
                    times = child.cpu_times()
                    lived = max(time.time() - child.create_time(), 1e-3)
                    child_cpu = 100.0 * (times.user + times.system) / lived
                rss += int(child.memory_info().rss)
            except psutil.Error:  # ended meanwhile
                continue
            cpu += child_cpu
            seen[child.pid] = child
        self._children = seen
        return cpu, rss
