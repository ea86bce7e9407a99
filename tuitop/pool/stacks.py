"""Stack dumps of workers: where a job past its time limit was, before it is killed.

Each worker registers ``faulthandler`` on SIGUSR1 at its start, writing into a file of the
pool's (:meth:`StackDumps.path_for`, in a directory of the pool's alone, 0700). Asked,
it writes every thread's stack from faulthandler's C signal handler: at once, even while
a handler is stuck in C code. File names and line numbers only: no value, no secret.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tuitop.osutil import process_running

PREFIX = "tuitop-pool-"
"""The directory of a pool's stack dumps: ``tuitop-pool-<pid>-…`` in the temp directory."""
WAIT = 1.0
"""How long workers asked for their stacks have to write them (a worker frozen, or that
replaced the handler, writes none)."""
LIMIT = 64 * 1024


class StackDumps:
    """The dump files of one pool's workers."""

    def __init__(self) -> None:
        _remove_left_behind()
        self.directory = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
        self._made = 0

    def path_for(self, slot: int) -> Path:
        """A new file's path, for the worker about to start in ``slot``."""
        self._made += 1
        return self.directory / f"{slot}-{self._made}"

    def ask(self, workers: Sequence[tuple[int, Path]]) -> dict[Path, str]:
        """Asks each (pid, dump file) for its stacks, all at once, waits once for all, and
        returns what each wrote ('' for none)."""
        for pid, path in workers:
            with contextlib.suppress(OSError):
                path.write_bytes(b"")  # the worker appends: only this dump is read
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
        paths = [path for _, path in workers]
        _await_written(paths)
        return {path: _read(path) for path in paths}

    @staticmethod
    def forget(path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _await_written(paths: list[Path]) -> None:
    """Until every file is written (not empty, no longer growing), or WAIT."""
    deadline = time.monotonic() + WAIT
    sizes: dict[Path, int] = {}
    waiting = list(paths)
    while waiting and time.monotonic() < deadline:
        time.sleep(0.05)
        for path in list(waiting):
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size and sizes.get(path) == size:
                waiting.remove(path)
            sizes[path] = size


def _read(path: Path) -> str:
    try:
        with path.open("rb") as dumped:
            return dumped.read(LIMIT).decode(errors="replace").strip()
    except OSError:
        return ""


def _remove_left_behind() -> None:
    """The directories of pools that were killed (SIGKILL cleans nothing up)."""
    with contextlib.suppress(OSError):
        for entry in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-*"):
            pid = entry.name.removeprefix(PREFIX).partition("-")[0]
            ours = pid.isascii() and pid.isdigit() and len(pid) <= 10
            if not ours or process_running(int(pid)):
                continue
            if entry.is_dir() and not entry.is_symlink() and entry.stat().st_uid == os.getuid():
                shutil.rmtree(entry, ignore_errors=True)
