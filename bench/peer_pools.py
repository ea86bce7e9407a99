"""The pools ``python -m bench.peers`` compares: how each is started, where its jobs wait,
and how to tell that none is left.

Every pool serves database 0 of the benchmark's Redis with ``workers`` processes, each
running one job at a time (arq: one event loop a process, up to its ``max_jobs``), logs
warnings only, and keeps no results. For each pool :meth:`Pool.pending` names Redis
commands whose integer replies add up to zero exactly when its queue is empty and nothing
it has taken is still unacked — its own in-flight record:

* tuitop, bare: the queue and the workers' processing lists (acked after the job);
* Huey: its list only (it keeps no in-flight record: a job is popped, then run);
* Celery: its list and kombu's ``unacked`` hash (early ack: when a child starts the job);
* Dramatiq: the ``.msgs`` hash (a message leaves it when acked, after the job);
* arq: its queue (a job leaves it when finished);
* RQ: its list, its intermediate list, the started-jobs registry (left when finished).

:attr:`Pool.activation` names the keys whose arrival in database 0 hands the staged jobs
to the pool; every other staged key is moved in beforehand.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.common import pool_command, wait_for_workers, write_config
from bench.peer_tasks import bare_tasks
from bench.peer_venvs import SPECS, VenvSpec
from tuitop.backends.redis import keys

Command = tuple[str, ...]


@dataclass(frozen=True)
class PoolContext:
    """One session of a pool: its Redis port, its number of workers, its directory."""

    port: int
    workers: int
    directory: Path


class Pool(ABC):
    """A pool under test."""

    name: str
    distribution: str
    activation: tuple[str, ...]
    venv: VenvSpec | None = None

    @property
    def tasks(self) -> str:
        """Its module in :mod:`bench.peer_tasks` is ``<tasks>_tasks``."""
        return self.name

    @property
    def python(self) -> str:
        """The interpreter of the pool and of its producer."""
        return str(self.venv.python) if self.venv else sys.executable

    @abstractmethod
    def commands(self, context: PoolContext) -> list[list[str]]:
        """The commands that start the pool (one process group)."""

    @abstractmethod
    def settings(self, workers: int) -> str:
        """What runs, with which settings, in a sentence."""

    def ready(self, client: redis.Redis, context: PoolContext) -> None:
        """Returns once the pool says its workers are ready (if it can say it)."""
        return

    @abstractmethod
    def pending(self, client: redis.Redis, context: PoolContext) -> list[Command]:
        """The commands whose integer replies add up to the jobs not finished, once the
        pool is ready."""


class Tuitop(Pool):
    name = "tuitop"
    distribution = "tuitop"
    activation = (keys.QUEUE,)

    def commands(self, context: PoolContext) -> list[list[str]]:
        config = write_config(context.directory, context.port, context.workers)
        return [pool_command(context.directory, config, "--handlers", "bench.peers_handler")]

    def settings(self, workers: int) -> str:
        return (
            f"python -m tuitop --no-ui, $sys_nb_backend_workers = {workers}, default lanes "
            "(one worker is latency_15m's and helps the default lane), log level warning"
        )

    def ready(self, client: redis.Redis, context: PoolContext) -> None:
        wait_for_workers(client, context.workers)

    def pending(self, client: redis.Redis, context: PoolContext) -> list[Command]:
        workers = keys.names_in(client.smembers(keys.WORKERS))
        return [("LLEN", keys.QUEUE), ("EXISTS", *map(keys.processing_list, workers))]


class Bare(Pool):
    name = "bare"
    distribution = "redis"
    activation = (bare_tasks.QUEUE,)

    def commands(self, context: PoolContext) -> list[list[str]]:
        return [
            [
                sys.executable,
                "-m",
                "bench.peers_bare",
                "--port",
                str(context.port),
                "--workers",
                str(context.workers),
            ]
        ]

    def settings(self, workers: int) -> str:
        return (
            f"{workers} forked processes: one Lua script takes up to 32 (RPOP + LPUSH onto "
            "the worker's processing list), else BLMOVE of one (60 s); one DEL acks the batch"
        )

    def pending(self, client: redis.Redis, context: PoolContext) -> list[Command]:
        lists = [bare_tasks.processing_list(index) for index in range(context.workers)]
        return [("LLEN", bare_tasks.QUEUE), ("EXISTS", *lists)]


class Huey(Pool):
    name = "huey"
    distribution = "huey"
    activation = ("huey.redis.bench",)
    venv = SPECS["huey"]

    def commands(self, context: PoolContext) -> list[list[str]]:
        return [
            [
                self.python,
                "-m",
                "huey.bin.huey_consumer",
                "bench.peer_tasks.huey_tasks.huey",
                "-k",
                "process",
                "-w",
                str(context.workers),
                "-q",
            ]
        ]

    def settings(self, workers: int) -> str:
        return (
            f"huey_consumer -k process -w {workers} -q; RedisHuey, results off, blocking "
            "dequeue (BRPOP, 1 s timeout), its scheduler on (defaults)"
        )

    def pending(self, client: redis.Redis, context: PoolContext) -> list[Command]:
        return [("LLEN", "huey.redis.bench")]


class Celery(Pool):
    name = "celery"
    distribution = "celery"
    activation = ("celery",)
    venv = SPECS["celery"]

    def commands(self, context: PoolContext) -> list[list[str]]:
        return [
            [
                self.python,
                "-m",
                "celery",
                "-A",
                "bench.peer_tasks.celery_tasks",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                str(context.workers),
                "--loglevel",
                "WARNING",
            ]
        ]

    def settings(self, workers: int) -> str:
        return (
            f"celery worker --pool prefork --concurrency {workers} --loglevel WARNING; Redis "
            "broker, no result backend, acks_late off, prefetch multiplier 4, gossip, mingle "
            "and heartbeats on (defaults)"
        )

    def pending(self, client: redis.Redis, context: PoolContext) -> list[Command]:
        return [("LLEN", "celery"), ("HLEN", "unacked")]


class Dramatiq(Pool):
    name = "dramatiq"
    distribution = "dramatiq"
    activation = ("dramatiq:default",)
    venv = SPECS["dramatiq"]

    def commands(self, context: PoolContext) -> list[list[str]]:
        return [
            [
                self.python,
                "-m",
                "dramatiq",
                "bench.peer_tasks.dramatiq_tasks",
                "--processes",
                str(context.workers),
                "--threads",
                "1",
            ]
        ]

    def settings(self, workers: int) -> str:
        return (
            f"dramatiq --processes {workers} --threads 1; RedisBroker, default middleware, "
            "prefetch 2 a process (threads x 2), idle polls backing off to 1 s (defaults)"
        )

    def pending(self, client: redis.Redis, context: PoolContext) -> list[Command]:
        return [("HLEN", "dramatiq:default.msgs")]


class Arq(Pool):
    name = "arq"
    distribution = "arq"
    activation = ("arq:queue",)
    venv = SPECS["arq"]

    def commands(self, context: PoolContext) -> list[list[str]]:
        command = [self.python, "-m", "arq", "bench.peer_tasks.arq_tasks.WorkerSettings"]
        command += ["--custom-log-dict", "bench.peer_tasks.arq_tasks.LOG_CONFIG"]
        return [command] * context.workers

    def settings(self, workers: int) -> str:
        return (
            f"{workers} x arq WorkerSettings (one process each); max_jobs 10 and poll_delay "
            "0.5 s (defaults), keep_result 0, log level warning"
        )

    def pending(self, client: redis.Redis, context: PoolContext) -> list[Command]:
        return [("ZCARD", "arq:queue")]


class Rq(Pool):
    name = "rq"
    distribution = "rq"
    activation = ("rq:queue:default",)
    venv = SPECS["rq"]

    def commands(self, context: PoolContext) -> list[list[str]]:
        return [
            [
                self.python,
                "-m",
                "rq.cli",
                "worker-pool",
                "-n",
                str(context.workers),
                "--logging-level",
                "WARNING",
                "-u",
                f"redis://127.0.0.1:{context.port}/0",
                "default",
            ]
        ]

    def settings(self, workers: int) -> str:
        return (
            f"rq worker-pool -n {workers} --logging-level WARNING; the default Worker class "
            "(a forked work horse a job), jobs enqueued with result_ttl=0"
        )

    def pending(self, client: redis.Redis, context: PoolContext) -> list[Command]:
        return [
            ("LLEN", "rq:queue:default"),
            ("LLEN", "rq:queue:default:intermediate"),
            ("ZCARD", "rq:wip:default"),
        ]


class RqSimple(Rq):
    """RQ without its fork a job (``--worker-class rq.worker.SimpleWorker``): not one of
    the default pools, for a look at what RQ's default costs."""

    name = "rq-simple"

    @property
    def tasks(self) -> str:
        return "rq"

    def commands(self, context: PoolContext) -> list[list[str]]:
        [command] = super().commands(context)
        return [[*command[:-1], "--worker-class", "rq.worker.SimpleWorker", command[-1]]]

    def settings(self, workers: int) -> str:
        return (
            f"rq worker-pool -n {workers} --worker-class rq.worker.SimpleWorker "
            "--logging-level WARNING (jobs run in the worker, no fork), result_ttl=0"
        )


POOLS: dict[str, Pool] = {
    pool.name: pool
    for pool in (Tuitop(), Bare(), Huey(), Celery(), Dramatiq(), Arq(), Rq(), RqSimple())
}
"""Every pool, in the order a round runs them."""
DEFAULT_POOLS = ("tuitop", "bare", "huey", "celery", "dramatiq", "arq", "rq")
