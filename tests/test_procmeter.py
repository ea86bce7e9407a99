"""ProcessMeter: this host's workers measured by psutil, others left as their heartbeat says."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time

import psutil

from tests.pool import wait_until
from tuitop.osutil import ProcessTree
from tuitop.procmeter import ProcessMeter
from tuitop.snapshot import QueueView, Snapshot, WorkerView
from tuitop.stats import Percentiles, WindowStats

_NONE = Percentiles(0, None, None, None, None)
_EMPTY = WindowStats(10, {}, _NONE, _NONE)


def _worker(worker_id: str, host: str, pid: int, state: str = "idle") -> WorkerView:
    return WorkerView(
        id=worker_id, pool="p", host=host, pid=pid, slot=0, state=state, topic="", since=0.0,
        job_started=0.0, done=0, failed=0, processed=0, max_messages=1000, holding=0,
        rss=123, cpu=45.0, beat=0.0,
    )  # fmt: skip


def _snapshot(*workers: WorkerView) -> Snapshot:
    queue = QueueView(0, 0, 0, 0, None, None)
    return Snapshot(0.0, queue, workers, (), _EMPTY, _EMPTY, _EMPTY)


def test_local_workers_are_measured_remote_and_dead_ones_keep_their_heartbeat() -> None:
    here = socket.gethostname()
    local = _worker("p/0#1", here, os.getpid())
    remote = _worker("p/1#2", "elsewhere", os.getpid())
    dead = _worker("p/2#3", here, os.getpid(), state="dead")
    gone = _worker("p/3#4", here, 2**22 + 12345)  # no such process: its heartbeat stays
    meter = ProcessMeter()
    first = meter.measure(_snapshot(local, remote, dead, gone))
    measured = first.workers[0]
    assert measured.rss is not None and measured.rss > 10_000_000  # this Python's RSS
    assert measured.cpu == 45.0  # no interval yet: the heartbeat's CPU % stays
    assert first.workers[1:] == (remote, dead, gone)
    sum(range(200_000))  # some CPU between the two measurements
    second = meter.measure(_snapshot(local))
    assert second.workers[0].cpu is not None and second.workers[0].cpu != 45.0
    assert dataclasses.replace(second.workers[0], rss=123, cpu=45.0) == local


def test_a_workers_children_count_in_its_cpu_and_rss() -> None:
    # A worker stand-in with a child that holds 50 MB and spins.
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'b = bytearray(50_000_000)\\nwhile True: b[0] ^= 1'])\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        tree = ProcessTree(psutil.Process(parent.pid))
        wait_until(lambda: tree.measure()[1] > 60_000_000, 10, "the child's 50 MB counted")
        time.sleep(0.5)
        cpu, _rss = tree.measure()
        assert cpu > 30  # the child spins; the parent sleeps
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()
