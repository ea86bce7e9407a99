"""What a worker and its pool share (tuitop.worker.status), and how a worker process is
found by the pool's forkserver (tuitop.worker is a package: its parts are preloaded)."""

from __future__ import annotations

import importlib
import pickle
from multiprocessing.context import BaseContext

from tuitop.pool.workers import WORKER_PRELOAD, new_context
from tuitop.worker import loop
from tuitop.worker.loop import worker_main
from tuitop.worker.status import WorkerExit, WorkerState, WorkerStatus


def test_a_new_status_is_a_worker_starting_with_nothing_done() -> None:
    status = WorkerStatus.create()
    assert status.state is WorkerState.STARTING and not status.idle and not status.busy
    assert (status.done, status.failed, status.processed, status.retried) == (0, 0, 0, 0)
    assert (status.job_clock, status.job_message, status.task_pid) == (0.0, 0, 0)
    assert (status.alive_at, status.listed_at, status.rebeat) == (0.0, 0.0, False)


def test_a_job_is_seen_while_it_runs_and_counted_when_it_ends() -> None:
    status = WorkerStatus.create()
    status.enter(WorkerState.BUSY)
    assert status.busy and status.state is WorkerState.BUSY and status.since > 0
    status.job_began(1234.5, 2**32, 77.25)  # a job key is up to 2**32: exact in a double
    assert (status.job_started, status.job_message, status.job_clock) == (1234.5, 2**32, 77.25)
    status.count_done()
    status.job_ended()
    assert (status.job_started, status.job_message, status.job_clock) == (0.0, 0, 0.0)
    assert (status.done, status.processed) == (1, 1)
    status.enter(WorkerState.IDLE)
    assert status.idle and status.state.label == "idle"


def test_the_pool_takes_a_task_pid_once_and_a_rebeat_is_asked_until_cleared() -> None:
    status = WorkerStatus.create()
    status.task_pid = 4242
    assert status.take_task_pid() == 4242
    assert status.take_task_pid() == 0
    status.ask_rebeat()
    assert status.rebeat
    status.clear_rebeat()
    assert not status.rebeat


def test_the_states_and_exit_codes_keep_their_values() -> None:
    """Stored as they were before they had names: a pool and a worker of one version
    agree whatever, but a value is what a log or a core dump shows."""
    assert [float(state) for state in WorkerState] == [0.0, 1.0, 2.0, 3.0]
    assert {code.name: int(code) for code in WorkerExit} == {
        "OK": 0,
        "CRASH": 1,
        "STORE_AUTH": 3,
        "STORE_UNREACHABLE": 4,
        "HANDLERS": 5,
    }


def _write_in_child(status: WorkerStatus) -> None:
    status.enter(WorkerState.BUSY)
    status.count_retried()
    status.alive_at = 5.0


def test_a_status_made_by_the_pool_is_shared_with_the_worker_process() -> None:
    """As the pool starts a worker: the status crosses into a forkserver's child (it
    pickles as its shared array) and what the child writes, the pool reads."""
    context: BaseContext = new_context()
    status = WorkerStatus.create(context)
    process = context.Process(target=_write_in_child, args=(status,))  # type: ignore[attr-defined]
    process.start()
    process.join(30)
    assert process.exitcode == 0
    assert status.busy and status.retried == 1 and status.alive_at == 5.0


def test_a_private_status_pickles_with_its_values() -> None:
    status = WorkerStatus.create()
    status.count_failed()
    assert pickle.loads(pickle.dumps(status)).failed == 1


def test_the_forkserver_preloads_the_module_of_the_workers_entry_point() -> None:
    """A worker process unpickles ``worker_main`` by its module's name: that module (and
    every other preloaded one) must exist, and be the one preloaded."""
    assert worker_main.__module__ == loop.__name__ == "tuitop.worker.loop"
    assert worker_main.__module__ in WORKER_PRELOAD
    for name in WORKER_PRELOAD:
        importlib.import_module(name)
    assert pickle.loads(pickle.dumps(worker_main)) is worker_main


_CHANNEL_IMPORTS = """
import importlib, sys
from tuitop.pool.workers import WORKER_PRELOAD
for name in WORKER_PRELOAD:
    importlib.import_module(name)
preloaded = set(sys.modules)
from tuitop.backends import worker_channel
from tuitop.backends.base import RetryPolicy
from tuitop.config import DB_QUEUE, DatabaseSettings, RedisSettings, Settings
for settings in (
    Settings(redis=RedisSettings("127.0.0.1", 1)),
    Settings(database=DatabaseSettings("127.0.0.1", 1, name="t", user="u"), queue=DB_QUEUE),
):
    channel = worker_channel(
        settings, serves=("default",), retry=RetryPolicy(), client_name="c", socket_timeout=1.0
    )
    channel.close()
print(" ".join(sorted(
    name for name in set(sys.modules) - preloaded
    if name.split(".")[0] in ("tuitop", "redis", "pymysql")
)))
"""


def test_the_forkserver_preloads_each_backends_worker_channel() -> None:
    """What a new worker imports before its first command is the forkserver's to import
    once (WORKER_PRELOAD: ~40 ms a worker otherwise, its slot serving nothing): its
    channel on either queue, and the driver under it. Run in a fresh interpreter, as the
    forkserver is. (tuitop.backends.redis became a package whose __init__ imports
    nothing: preloading it no longer preloads redis-py nor the Redis channel.)"""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _CHANNEL_IMPORTS], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == []
