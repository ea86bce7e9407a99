"""The log lines a view shows: a worker_log file followed as ``tail -F`` does.

The pool run by the UI hands its lines over itself (``PoolProcess.read_lines``); a view of
pools elsewhere follows their worker_log, when it is on this host.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

TAIL_BYTES = 64 * 1024
"""How far back the first read starts: the last screens of a big file, not all of it."""


class LogSource(Protocol):
    def read_lines(self) -> list[str]:
        """The lines written since the last call."""
        ...


class FileTail:
    """Follows a file through truncation and rotation (a new, smaller file starts over)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._offset = 0
        self._partial = b""

    def read_lines(self) -> list[str]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self._offset:
            self._offset, self._partial = 0, b""  # rotated or truncated
        start = max(self._offset, size - TAIL_BYTES)
        if start >= size:
            return []
        with open(self.path, "rb") as handle:
            handle.seek(start)
            chunk = handle.read(size - start)
        self._offset = start + len(chunk)
        data = self._partial + chunk
        # A line still being written waits for its end.
        complete, _, self._partial = data.rpartition(b"\n")
        if not complete and not data.endswith(b"\n"):
            return []
        return complete.decode("utf-8", "replace").splitlines()
