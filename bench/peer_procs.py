"""A pool's processes: started in one process group of their own, measured (CPU, RSS)
over the whole tree, and killed whole at the end whatever happens.

What a caller may rely on: every process a :class:`ProcessGroup` ever saw in its tree
(its commands' processes and all their descendants, looked at on each :meth:`members`
call) is gone after :meth:`close`, be it still in the group or not (a worker that made a
session of its own); close() is idempotent and never raises for a process already gone.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

GRACE_SECONDS = 10.0


class ProcessGroup:
    """``commands`` started at once in a new session (the first process' pid is the
    group's id), their output appended to ``output``. Several commands run under
    ``sh -c "c1 & c2 & exec c3"``: the last replaces the shell, the others are its
    children, so the tree holds exactly the commands' processes."""

    def __init__(
        self,
        commands: Sequence[Sequence[str]],
        *,
        env: Mapping[str, str],
        cwd: Path,
        output: Path,
    ) -> None:
        self._seen: dict[int, psutil.Process] = {}
        if len(commands) == 1:
            argv = list(commands[0])
        else:
            script = " & ".join(shlex.join(command) for command in commands[:-1])
            argv = ["/bin/sh", "-c", f"{script} & exec {shlex.join(commands[-1])}"]
        with open(output, "ab") as sink:
            self.root = subprocess.Popen(
                argv,
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pgid = self.root.pid

    def exited(self) -> list[int]:
        """The exit status of the group's first process once it has ended (else empty)."""
        code = self.root.poll()
        return [] if code is None else [code]

    def members(self) -> list[psutil.Process]:
        """Every live process of the tree (the commands' and their descendants)."""
        found: list[psutil.Process] = []
        if self.root.poll() is None:  # not reaped: its pid is still its own
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(self.root.pid)
                found.append(root)
                found.extend(root.children(recursive=True))
        for process in found:
            self._seen.setdefault(process.pid, process)
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU of the tree so far, reaped children's included."""
        total = 0.0
        for process in self.members():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
        return total

    def rss(self) -> list[int]:
        """The resident set size (bytes) of each live process of the tree."""
        sizes: list[int] = []
        for process in self.members():
            with contextlib.suppress(psutil.Error):
                sizes.append(process.memory_info().rss)
        return sizes

    def close(self, grace: float = GRACE_SECONDS) -> None:
        """SIGTERM to the group; after ``grace`` seconds (or once the first process has
        ended) SIGKILL to the group and to every process ever seen in the tree; waits for
        them all (``grace`` seconds more at most)."""
        self.members()
        self._signal_group(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.root.wait(grace)
        self.members()
        self._signal_group(signal.SIGKILL)
        for seen in self._seen.values():
            with contextlib.suppress(psutil.Error):
                if seen.is_running():
                    seen.kill()
        self.root.wait()
        gone_by = time.monotonic() + grace
        for seen in self._seen.values():
            with contextlib.suppress(psutil.Error):
                seen.wait(max(0.0, gone_by - time.monotonic()))

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signum)
