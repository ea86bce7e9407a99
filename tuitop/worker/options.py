"""What a worker process is given to run (:class:`WorkerOptions`), and its id."""

from __future__ import annotations

from dataclasses import dataclass, field

from tuitop.backends.base import RetryPolicy
from tuitop.config import Settings
from tuitop.lanes import DEFAULT_LANE
from tuitop.mail import DEFAULT_SENDMAIL
from tuitop.metrics import CountingTarget
from tuitop.tasks import TaskCommand

HEARTBEAT_SOCKET_TIMEOUT = 2.0
"""How long the heartbeat's own connection waits for an answer: a beat never waits
past its lease."""


def worker_id_of(slot_name: str, pid: int) -> str:
    """The id of the process ``pid`` running in slot ``pool/slot``."""
    return f"{slot_name}#{pid}"


@dataclass(frozen=True)
class WorkerOptions:
    """What a worker process needs to run; picklable (it crosses into the new process)."""

    slot_name: str
    """``pool/slot``; the worker's id adds its pid (:func:`worker_id_of`)."""
    pool: str
    slot: int
    settings: Settings
    supervisor_pid: int
    supervisor_started: float | None = None
    """The supervisor's process creation time, to tell it from a process reusing its pid."""
    log_file: str | None = None
    log_to_stderr: bool = False
    max_messages: int = 1000
    max_batch: int = 32
    block_timeout: float = 30.0
    """Seconds a BLMOVE waits; a stop request cuts it short, so it only bounds idle traffic
    (and how long a connection cut without a word takes to be noticed: 10 s more)."""
    heartbeat_interval: float = 1.0
    heartbeat_ttl: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    handler_modules: tuple[str, ...] = ()
    sendmail: str = DEFAULT_SENDMAIL
    task: TaskCommand | None = None
    """Tuleap's task process, for the messages no handler takes (None: they are refused)."""
    job_timeout: float = 15 * 60.0
    """A task running longer is killed by the worker (the pool kills a worker whose
    in-process handler runs longer)."""
    grace_period: float = 30.0
    """How long a task may go on once the pool is gone, before it is killed."""
    lane: str = DEFAULT_LANE
    """The lane this worker is for (:mod:`tuitop.lanes`)."""
    serves: tuple[str, ...] = (DEFAULT_LANE,)
    """The lanes it takes from, in order (its own first)."""
    traceback_file: str | None = None
    """Where it writes every thread's stack when it gets SIGUSR1 (``faulthandler``): the
    pool asks for it before it kills a job past its time limit."""
    counting: CountingTarget | None = None
    """Where it counts what it runs for the pool's metrics (None: the pool serves none)."""
    help_interval: float = 1.0
    """The first blocking wait of a worker serving several lanes: it blocks on Tuleap's
    list, where every message arrives, and looks at its other lanes' lists between jobs and
    this often when it just worked; idle, the wait doubles up to a thirtieth of its lane's
    latency target (``latency_15m``: 30 s), ``block_timeout`` at most (a message another
    worker moved to its lane starts that soon)."""
