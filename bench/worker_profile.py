"""Where one worker's time goes per message: a real worker (tuitop.worker.loop.Worker) run in
this process on a private Redis over N pre-queued messages, once plain (its rate) and once
under cProfile (how that time splits between taking a batch, running each message, the
watchdog's guard and acking).

Prints the split in µs per message (the profiled shares applied to the plain run's time)
and the Redis server's own time per batch (commandstats). Run:
``python -m bench.worker_profile [--messages 30000] [--job tuitop.noop]``.
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing
import pstats
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

from bench.common import write_config
from tuitop.backends.redis import keys
from tuitop.config import load_config
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.message import encode
from tuitop.pool.options import PoolOptions
from tuitop.worker.loop import Worker
from tuitop.worker.status import WorkerStatus

PARTS = {
    "ack the last batch and take the next (one round trip; decode)": "_next_batch",
    "run each message (handler, status, stats)": "_process",
    "ack on its own (after a job past 2 ms; the stats when due)": "_flush",
    "arm the watchdog's guard": "arm",
    "disarm it": "disarm",
    "lease freshness check": "_list_lost",
}


def run_worker(directory: Path, port: int, count: int, job: str, profile: bool) -> dict[str, Any]:
    """Drains ``count`` messages of ``job`` with one in-process worker; returns its
    seconds, and the profile's cumulative seconds by function name when ``profile``."""
    client = redis.Redis(port=port)
    client.flushall()
    pipe = client.pipeline(transaction=False)
    for index in range(count):
        pipe.lpush(keys.QUEUE, encode(job, {"id": index}))
    pipe.execute()
    config = write_config(directory, port, 1)
    settings = load_config([str(config)]).settings
    options = PoolOptions(
        pool_name="profile",
        log_file=str(directory / "worker_log"),
        log_to_stderr=False,
        max_messages=10**9,
    ).worker_options(
        slot=0,
        settings=settings,
        lane=settings.lanes.names[0],
        serves=(settings.lanes.names[0],),
        supervisor_started=None,
        traceback_file=str(directory / "tracebacks"),
    )
    status = WorkerStatus.create(multiprocessing.get_context())  # shared memory, as a pool's
    worker = Worker(options, status, multiprocessing.RawValue("i", 30))
    done = threading.Event()
    times: dict[str, float] = {}

    def watch() -> None:
        while client.llen(keys.QUEUE) or any(
            client.llen(key) for key in client.scan_iter(match=keys.PROCESSING_PATTERN)
        ):
            time.sleep(0.002)
        times["end"] = time.perf_counter()
        # Not request_stop(): from this thread it would raise here, not in the worker's.
        worker.stop_requested = True
        client.lpush(keys.QUEUE, encode("tuitop.noop", {}))  # wakes its blocking wait
        done.set()

    profiler = cProfile.Profile()
    times["start"] = time.perf_counter()
    threading.Thread(target=watch, daemon=True).start()
    if profile:
        profiler.enable()
    worker.run()
    if profile:
        profiler.disable()
    done.wait(10)
    result: dict[str, Any] = {"seconds": times["end"] - times["start"]}
    if profile:
        stats = pstats.Stats(profiler)
        cumulative: dict[str, float] = {}
        for (_, _, name), row in stats.stats.items():  # type: ignore[attr-defined]
            cumulative[name] = cumulative.get(name, 0.0) + row[3]
        result["cumulative"] = cumulative
        result["total"] = cumulative.get("_loop", 0.0)
    client.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--job", default="tuitop.noop")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp, EmbeddedRedis() as server:
        directory = Path(temp)
        plain = run_worker(directory, server.port, args.messages, args.job, profile=False)
        client = server.client()
        client.config_resetstat()
        profiled = run_worker(directory, server.port, args.messages, args.job, profile=True)
        commands = client.info("commandstats")
    per_message = plain["seconds"] / args.messages * 1e6
    print(
        f"one worker, {args.messages:,} of {args.job}: {args.messages / plain['seconds']:,.0f} "
        f"msg/s, {per_message:.1f} µs a message (plain run)"
    )
    total = profiled["total"] or 1.0
    for label, name in PARTS.items():
        share = profiled["cumulative"].get(name, 0.0) / total
        print(f"  {label:<46} {share * per_message:6.1f} µs  ({share:5.1%})")
    batches = max(int(commands.get("cmdstat_evalsha", {}).get("calls", 0)), 1)
    print(f"Redis server time a batch (~{args.messages / batches:.0f} messages):")
    for name in ("evalsha", "eval", "hincrby"):
        stat = commands.get(f"cmdstat_{name}")
        if stat:
            print(f"  {name:<8} {stat['calls']:>6} calls, {stat['usec_per_call']:7.1f} µs each")


if __name__ == "__main__":
    main()
