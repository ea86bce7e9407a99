"""The pool's worker set (tuitop.pool.workers), what it leaves on the host."""

from __future__ import annotations

import ctypes.util
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tuitop import osutil
from tuitop.config import Settings
from tuitop.lanes import DEFAULT_LANE
from tuitop.pool.options import PoolOptions, recycle_limit
from tuitop.pool.stacks import PREFIX
from tuitop.pool.workers import WorkerSet, new_context


def test_the_stack_dump_directories_of_killed_pools_are_removed() -> None:
    """SIGKILL cleans nothing up: the next pool on the host removes what is left."""
    tmp = Path(tempfile.gettempdir())
    left = Path(tempfile.mkdtemp(prefix=f"{PREFIX}999999999-"))
    (left / "0-1").write_text("a stack")
    context = new_context()
    workers = WorkerSet(PoolOptions(), context, context.RawValue("i", 0), logging.getLogger())
    try:
        assert not left.exists()
        assert workers.stacks.directory.parent == tmp and workers.stacks.directory.exists()
        assert workers.stacks.directory.stat().st_mode & 0o077 == 0  # the pool's alone
    finally:
        workers.close()
    assert not workers.stacks.directory.exists()


def test_workers_started_together_are_not_all_recycled_at_once() -> None:
    """Two workers started together left together after --max-messages, and the queue
    waited for both successors (the 1-worker p99 of 21-43 ms in bench.peers). Each worker
    now draws its own limit, at most 5 % short of the admin's, never above it."""
    options = PoolOptions(max_messages=1000)
    limits = {
        options.worker_options(
            slot=0,
            settings=Settings(),
            lane=DEFAULT_LANE,
            serves=(DEFAULT_LANE,),
            supervisor_started=0.0,
            traceback_file="",
        ).max_messages
        for _ in range(200)
    }
    assert min(limits) >= 950 and max(limits) <= 1000
    assert len(limits) > 10
    assert {recycle_limit(n) for n in range(1, 20) for _ in range(20)} == set(range(1, 20))


def test_a_forkserver_start_does_not_look_for_libc_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """find_library runs ldconfig (a fork and an exec, milliseconds in each new worker):
    asked only when libc.so.6 cannot be loaded."""
    called: list[str] = []
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: called.append(name))
    osutil._prctl.cache_clear()
    try:
        assert osutil.parent_death_signal_available()
        assert called == []
    finally:
        osutil._prctl.cache_clear()


FORKSERVER_PROBE = """
import ctypes, multiprocessing.forkserver, subprocess, sys
import psutil
import tuitop.forkserver_subreaper
from tuitop.pool.workers import new_context

flag = ctypes.c_int(-1)
ctypes.CDLL("libc.so.6").prctl(37, ctypes.byref(flag), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
worker = new_context().Process(
    target=subprocess.run, args=(["sh", "-c", "sleep 30 & echo $! > " + sys.argv[1]],)
)
worker.start()
worker.join()
orphan = psutil.Process(int(open(sys.argv[1]).read()))
try:
    print(flag.value, orphan.ppid() == multiprocessing.forkserver._forkserver._forkserver_pid)
finally:
    orphan.kill()
"""


def test_the_forkserver_adopts_what_its_children_leave_and_only_it(tmp_path: Path) -> None:
    """A worker's shell leaves a background sleep: its parent becomes the forkserver (which
    the pool asks about as it reaps a killed worker), not init. The process that imports
    tuitop.forkserver_subreaper itself is left as it was (else it would adopt every
    orphan below it, and keep them as zombies)."""
    repo = Path(__file__).resolve().parent.parent
    probe = subprocess.run(
        [sys.executable, "-c", FORKSERVER_PROBE, str(tmp_path / "orphan.pid")],
        capture_output=True,
        text=True,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        timeout=60,
    )
    assert probe.stdout.split() == ["0", "True"], probe.stderr
