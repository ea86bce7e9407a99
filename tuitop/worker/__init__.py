"""A worker process of the pool: takes messages, runs their handlers, acks, beats.

Each part owns one thing:

* :mod:`.loop` — the process's main thread (:class:`~.loop.Worker`: take, run, ack) and
  its entry point (:func:`~.loop.worker_main`);
* :mod:`.heartbeat` — the heartbeat thread (:class:`~.heartbeat.Heartbeat`);
* :mod:`.watchdog` — what a long job's watchdog takes over of its batch
  (:class:`~.watchdog.BatchGuard`);
* :mod:`.status` — what the worker and its pool share (:class:`~.status.WorkerStatus`),
  its states and its exit codes;
* :mod:`.options` — what a worker is given to run (:class:`~.options.WorkerOptions`).
"""

from tuitop.worker.loop import VAIN_WAITS_PER_TAKE, Worker, worker_main
from tuitop.worker.options import WorkerOptions, worker_id_of
from tuitop.worker.status import WorkerExit, WorkerState, WorkerStatus

__all__ = [
    "VAIN_WAITS_PER_TAKE",
    "Worker",
    "WorkerExit",
    "WorkerOptions",
    "WorkerState",
    "WorkerStatus",
    "worker_id_of",
    "worker_main",
]
