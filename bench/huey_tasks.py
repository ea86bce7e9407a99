"""The Huey side of the drain comparison: one no-op task on the benchmark's Redis."""

import os

from huey import RedisHuey

huey = RedisHuey(
    os.environ.get("BENCH_HUEY_NAME", "bench"),
    host="127.0.0.1",
    port=int(os.environ.get("BENCH_REDIS_PORT", "6379")),
    results=False,
)


@huey.task()
def noop() -> None:
    """Does nothing, as tuitop's tuitop.noop."""
