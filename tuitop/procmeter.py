"""CPU and memory of the workers running on this host, measured by psutil.

A worker publishes its own figures in its heartbeat once a second; a view on the same host
measures them itself, fresher and without trusting the worker, and keeps the heartbeat's
for workers on other hosts. Both count the worker and its children: a task process and
everything it started.
"""

from __future__ import annotations

import dataclasses
import socket

import psutil

from tuitop.osutil import ProcessTree
from tuitop.snapshot import Snapshot, WorkerView


class ProcessMeter:
    """Measures local workers between two calls (CPU % is over the time between them)."""

    def __init__(self, host: str | None = None) -> None:
        self.host = host or socket.gethostname()
        self._processes: dict[str, ProcessTree] = {}

    def measure(self, snapshot: Snapshot) -> Snapshot:
        """The snapshot with CPU % and RSS of this host's live workers measured now; a
        worker's first measurement (no interval yet) keeps its heartbeat's CPU %."""
        seen: dict[str, ProcessTree] = {}
        workers = []
        for worker in snapshot.workers:
            if worker.host == self.host and worker.pid and worker.state != "dead":
                worker = self._measure(worker, seen)
            workers.append(worker)
        self._processes = seen
        return dataclasses.replace(snapshot, workers=tuple(workers))

    def _measure(self, worker: WorkerView, seen: dict[str, ProcessTree]) -> WorkerView:
        tree = self._processes.get(worker.id)
        first = tree is None
        try:
            if tree is None:
                tree = ProcessTree(psutil.Process(worker.pid))
            cpu, rss = tree.measure()
        except (psutil.Error, ValueError, OverflowError):
            # Gone, not ours to read, or no pid at all: the heartbeat's figures stay.
            return worker
        seen[worker.id] = tree
        return dataclasses.replace(worker, rss=rss, cpu=worker.cpu if first else cpu)
