"""arq's side: one coroutine, ``WorkerSettings`` with arq's defaults (``max_jobs`` 10, a
poll of the queue every 0.5 s) but no result kept (``keep_result = 0``, as every pool
here keeps none). The round trip is arq's own: ``INCR`` on the worker's connection pool
(``ctx["redis"]``), awaited, as an arq job does its Redis work."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings

from bench.peer_tasks import peer_jobs

SETTINGS = RedisSettings(host=peer_jobs.HOST, port=peer_jobs.port(), database=peer_jobs.broker_db())


async def run(ctx: dict[str, Any], job: str, enqueued: float | None = None) -> None:
    if enqueued is not None:
        peer_jobs.record_wait(enqueued)
    if job == "roundtrip":
        await ctx["redis"].incr(peer_jobs.COUNTER_KEY)
    elif job != "noop":
        raise ValueError(f"unknown job {job!r}")


class WorkerSettings:
    functions: ClassVar[list[Any]] = [run]
    redis_settings = SETTINGS
    keep_result = 0


_runner: asyncio.Runner | None = None
_pool: ArqRedis | None = None


def enqueue(job: str, enqueued: float | None) -> None:
    global _runner, _pool
    if _runner is None:
        _runner = asyncio.Runner()
    if _pool is None:
        _pool = _runner.run(create_pool(SETTINGS))
    _runner.run(_pool.enqueue_job("run", job, enqueued))


LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "WARNING"}},
    "loggers": {"arq": {"handlers": ["stderr"], "level": "WARNING"}},
}
"""arq's logging for ``arq --custom-log-dict``: warnings only, as every pool here (arq's
default logs two INFO lines a job)."""
