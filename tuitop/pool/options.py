"""How a pool runs: its command-line options (the config files are :mod:`tuitop.config`)."""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass, field

from tuitop.backends.base import TULEAP_HOLD_LIMIT, RetryPolicy
from tuitop.config import Settings
from tuitop.mail import DEFAULT_SENDMAIL
from tuitop.metrics import CountingTarget
from tuitop.tasks import TaskCommand
from tuitop.worker.options import WorkerOptions

RECYCLE_JITTER = 0.05
"""The share of ``--max-messages`` a worker's own limit may fall short of it."""


def recycle_limit(max_messages: int) -> int:
    """A new worker's own limit: ``max_messages`` less up to :data:`RECYCLE_JITTER` of it,
    drawn at random (gunicorn's ``max_requests_jitter``, taken off rather than added: never
    above the admin's limit). Workers started together then do not all leave at once: each
    leaves a gap of a few milliseconds while its successor starts, which the others cover.
    Below 20 it is exact."""
    return max_messages - random.randint(0, int(max_messages * RECYCLE_JITTER))


@dataclass(frozen=True)
class MetricsOptions:
    """Where the pool serves ``/metrics`` (:mod:`tuitop.pool.exporter`)."""

    port: int
    address: str = "127.0.0.1"
    """Loopback unless the admin says otherwise: the series name the topics and the load
    of the forge, to anyone who can reach the port (no authentication)."""
    platform: str | None = None
    """Tuleap's ``$prometheus_platform``: a ``platform`` label on Tuleap's series."""


@dataclass(frozen=True)
class PoolOptions:
    """How the pool runs (command-line options, not the config files)."""

    pool_name: str = field(default_factory=socket.gethostname)
    log_file: str | None = None
    log_to_stderr: bool = True
    max_messages: int = 1000
    max_batch: int = 32
    job_timeout: float = 15 * 60.0
    grace_period: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    handler_modules: tuple[str, ...] = ()
    sendmail: str = DEFAULT_SENDMAIL
    task: TaskCommand | None = None
    """Tuleap's task process, for every message no built-in handler takes."""
    tuleap_hold_limit: float = TULEAP_HOLD_LIMIT
    """A Tuleap worker's list unchanged this long (and no pid file of it here) is
    recovered: its worker is gone (tuitop.backends.redis.tuleapworkers.left_behind)."""
    tick: float = 1.0
    doorbell_interval: float = 0.1
    """How often the pool looks at Tuleap's database queue for its idle workers
    (:mod:`tuitop.backends.db.doorbell`)."""
    heartbeat_ttl: float = 10.0
    control_fd: int | None = None
    """A pipe from the UI that runs this pool: ``+``/``-`` one worker more/fewer for the
    session, each byte counted (signals of one kind sent close together merge); its end of
    file (the UI is gone, however it died) is a warm stop that never turns cold."""
    metrics: MetricsOptions | None = None
    """Serve ``/metrics`` (None: no metrics, nothing counted)."""
    counting: CountingTarget | None = None
    """Where the workers count, set by the pool once its exporter made the place."""

    def worker_options(
        self,
        *,
        slot: int,
        settings: Settings,
        lane: str,
        serves: tuple[str, ...],
        supervisor_started: float,
        traceback_file: str,
    ) -> WorkerOptions:
        """What the worker of ``slot`` starts with."""
        return WorkerOptions(
            slot_name=f"{self.pool_name}/{slot}",
            pool=self.pool_name,
            slot=slot,
            settings=settings,
            supervisor_pid=os.getpid(),
            supervisor_started=supervisor_started,
            log_file=self.log_file,
            log_to_stderr=self.log_to_stderr,
            max_messages=recycle_limit(self.max_messages),
            max_batch=self.max_batch,
            heartbeat_ttl=self.heartbeat_ttl,
            retry=self.retry,
            handler_modules=self.handler_modules,
            sendmail=self.sendmail,
            task=self.task,
            job_timeout=self.job_timeout,
            grace_period=self.grace_period,
            lane=lane,
            serves=serves,
            traceback_file=traceback_file,
            counting=self.counting,
        )
