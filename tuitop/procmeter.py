"""CPU and memory of the workers running on this host, measured by psutil.

A worker publishes its own figures in its heartbeat once a second; a view on the same host
measures them itself, fresher and without trusting the worker, and keeps the heartbeat's
for workers on other hosts.
"""

from __future__ import annotations

import dataclasses
import socket

import psutil

from tuitop.snapshot import Snapshot, WorkerView


class ProcessMeter:
    """Measures local workers between two calls (CPU % is over the time between them)."""

    def __init__(self, host: str | None = None) -> None:
        self.host = host or socket.gethostname()
        self._processes: dict[str, psutil.Process] = {}

    def measure(self, snapshot: Snapshot) -> Snapshot:
        """The snapshot with CPU % and RSS of this host's live workers measured now; a
        worker's first measurement (no interval yet) keeps its heartbeat's CPU %."""
        seen: dict[str, psutil.Process] = {}
        workers = []
        for worker in snapshot.workers:
            if worker.host == self.host and worker.pid and worker.state != "dead":
                worker = self._measure(worker, seen)
            workers.append(worker)
        self._processes = seen
        return dataclasses.replace(snapshot, workers=tuple(workers))

    def _measure(self, worker: WorkerView, seen: dict[str, psutil.Process]) -> WorkerView:
        process = self._processes.get(worker.id)
        first = process is None
        try:
            if process is None:
                process = psutil.Process(worker.pid)
            with process.oneshot():
                cpu = process.cpu_percent()
                rss = process.memory_info().rss
        except psutil.Error:  # gone, or not ours to read: the heartbeat's figures stay
            return worker
        seen[worker.id] = process
        return dataclasses.replace(worker, rss=rss, cpu=worker.cpu if first else cpu)
