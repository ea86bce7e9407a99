"""The worker pool's three figures, measured on a private Redis with the real command.

1. enqueue → start latency at a steady 200 msg/s with idle workers (p50/p95/p99/max);
2. drain time of 10,000 pre-queued no-op messages with 2 workers, tuitop and Huey (2
   worker processes, its Redis storage) in the same run on the same Redis, plus Redis
   commands and round trips per message for tuitop;
3. what an idle pool of 2 workers costs: CPU of all its processes, Redis commands per second.

Prints a table and writes ``bench/results/pool.json``. Run: ``python -m bench.pool_bench``
(needs ``pip install -e '.[bench]'`` for Huey).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    REPO,
    command_count,
    percentile,
    start_pool,
    stop,
    wait_for_workers,
    write_config,
)
from bench.stamp_handler import STARTS_KEY
from tuitop.backends.redis import keys
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.message import encode

RESULTS = REPO / "bench" / "results" / "pool.json"


def bench_latency(
    directory: Path, server: EmbeddedRedis, rate: float, seconds: float
) -> dict[str, Any]:
    client = server.client()
    client.flushall()
    config = write_config(directory, server.port, 2)
    pool = start_pool(directory, config, "--handlers", "bench.stamp_handler")
    try:
        wait_for_workers(client, 2)
        total = int(rate * seconds)
        interval = 1.0 / rate
        begin = time.perf_counter()
        for index in range(total):
            target = begin + index * interval
            while (delay := target - time.perf_counter()) > 0:
                time.sleep(delay)
            now = time.time()
            payload = {"id": index, "enqueued": now}
            client.lpush(keys.QUEUE, encode("bench.stamp", payload, enqueue_ts=now))
        deadline = time.monotonic() + 30
        while client.llen(STARTS_KEY) < total and time.monotonic() < deadline:
            time.sleep(0.05)
        waits = [float(value) * 1000 for value in client.lrange(STARTS_KEY, 0, -1)]
    finally:
        stop(pool)
    return {
        "messages": total,
        "rate": rate,
        "received": len(waits),
        "p50_ms": percentile(waits, 0.50),
        "p95_ms": percentile(waits, 0.95),
        "p99_ms": percentile(waits, 0.99),
        "max_ms": max(waits),
        "mean_ms": statistics.fmean(waits),
    }


def bench_drain(directory: Path, server: EmbeddedRedis, count: int) -> dict[str, Any]:
    client = server.client()
    client.flushall()
    config = write_config(directory, server.port, 2)
    staging = "bench:staging"
    pipe = client.pipeline(transaction=False)
    for index in range(count):
        pipe.lpush(staging, encode("tuitop.noop", {"id": index}))
    pipe.execute()
    pool = start_pool(directory, config)
    try:
        wait_for_workers(client, 2)
        before = command_count(client)
        begin = time.perf_counter()
        client.rename(staging, keys.QUEUE)
        # Poll cheaply (one LLEN every 2 ms, as for Huey) until the queue is empty, then
        # until the processing lists are: the last messages are acked, not just taken.
        while client.llen(keys.QUEUE):
            time.sleep(0.002)
        while any(client.llen(key) for key in client.scan_iter(match=keys.PROCESSING_PATTERN)):
            time.sleep(0.002)
        elapsed = time.perf_counter() - begin
        after = command_count(client)
    finally:
        stop(pool)
    calls = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    # Each take is one script call (EVALSHA) or one BLMOVE; each ack, with the stats, is one
    # pipeline led by one EVAL. Heartbeats and the pool's own traffic are left out.
    round_trips = calls.get("evalsha", 0) + calls.get("blmove", 0) + calls.get("eval", 0)
    worker_commands = sum(calls.values()) - calls.get("llen", 0) - calls.get("scan", 0)
    return {
        "messages": count,
        "seconds": elapsed,
        "per_second": count / elapsed,
        "redis_commands_per_message": worker_commands / count,
        "round_trips_per_message": round_trips / count,
    }


def bench_huey(directory: Path, server: EmbeddedRedis, count: int) -> dict[str, Any]:
    client = server.client()
    client.flushall()
    env = dict(os.environ, PYTHONPATH=str(REPO), BENCH_REDIS_PORT=str(server.port))
    prepare = f"from bench.huey_tasks import noop\nfor _ in range({count}):\n    noop()\n"
    subprocess.run(
        [sys.executable, "-c", prepare],
        env=dict(env, BENCH_HUEY_NAME="staging"),
        cwd=REPO,
        check=True,
    )
    output = open(directory / "huey.txt", "ab")  # noqa: SIM115 - kept for the child
    consumer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "huey.bin.huey_consumer",
            "bench.huey_tasks.huey",
            "-k",
            "process",
            "-w",
            "2",
            "-q",
        ],
        env=env,
        cwd=REPO,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(3)  # let its processes start and block on the empty queue
        begin = time.perf_counter()
        client.rename("huey.redis.staging", "huey.redis.bench")
        while client.llen("huey.redis.bench"):
            time.sleep(0.002)
        elapsed = time.perf_counter() - begin
    finally:
        consumer.send_signal(signal.SIGINT)
        consumer.wait(timeout=60)
    return {"messages": count, "seconds": elapsed, "per_second": count / elapsed}


def bench_idle(directory: Path, server: EmbeddedRedis, seconds: float) -> dict[str, Any]:
    client = server.client()
    client.flushall()
    config = write_config(directory, server.port, 2)
    pool = start_pool(directory, config)
    try:
        wait_for_workers(client, 2)
        time.sleep(1)
        family = [psutil.Process(pool.pid), *psutil.Process(pool.pid).children(recursive=True)]
        cpu_before = sum(sum(p.cpu_times()[:2]) for p in family)
        commands_before = int(client.info("stats")["total_commands_processed"])
        time.sleep(seconds)
        commands_after = int(client.info("stats")["total_commands_processed"])
        cpu_after = sum(sum(p.cpu_times()[:2]) for p in family)
    finally:
        stop(pool)
    return {
        "seconds": seconds,
        "processes": len(family),
        "cpu_percent": 100 * (cpu_after - cpu_before) / seconds,
        "redis_commands_per_second": (commands_after - commands_before - 2) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="latency: messages/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency: duration")
    parser.add_argument("--drain", type=int, default=10_000, help="drain: messages")
    parser.add_argument("--runs", type=int, default=3, help="drain: runs of each (best kept)")
    parser.add_argument("--idle", type=float, default=10.0, help="idle: seconds measured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp, EmbeddedRedis() as server:
        directory = Path(temp)
        latency = bench_latency(directory, server, args.rate, args.seconds)
        tuitop_runs = [bench_drain(directory, server, args.drain) for _ in range(args.runs)]
        huey_runs = [bench_huey(directory, server, args.drain) for _ in range(args.runs)]
        idle = bench_idle(directory, server, args.idle)
        redis_version = server.client().info("server")["redis_version"]
    best_tuitop = max(tuitop_runs, key=lambda run: run["per_second"])
    best_huey = max(huey_runs, key=lambda run: run["per_second"])
    ratio = best_tuitop["per_second"] / best_huey["per_second"]
    lat, best, huey_best = latency, best_tuitop, best_huey
    rows = [
        (f"enqueue → start at {args.rate:.0f} msg/s, 2 idle workers", ""),
        (
            "  p50 / p95 / p99 / max",
            f"{lat['p50_ms']:.2f} / {lat['p95_ms']:.2f} / {lat['p99_ms']:.2f} / "
            f"{lat['max_ms']:.2f} ms",
        ),
        (f"drain {args.drain} no-op messages, 2 workers (best of {args.runs})", ""),
        ("  tuitop", f"{best['per_second']:.0f} msg/s ({best['seconds']:.2f} s)"),
        (
            f"  Huey {huey_version()}, 2 processes",
            f"{huey_best['per_second']:.0f} msg/s ({huey_best['seconds']:.2f} s)",
        ),
        ("  tuitop / Huey", f"{ratio:.1f}x"),
        ("  tuitop Redis commands per message", f"{best['redis_commands_per_message']:.3f}"),
        ("  tuitop round trips per message", f"{best['round_trips_per_message']:.3f}"),
        (f"idle pool, 2 workers ({args.idle:.0f} s)", ""),
        (f"  CPU, all {idle['processes']} processes", f"{idle['cpu_percent']:.2f} %"),
        ("  Redis commands", f"{idle['redis_commands_per_second']:.1f} /s"),
    ]
    width = max(len(label) for label, _ in rows)
    print(
        f"tuitop pool benchmark — {platform.node()}, {os.cpu_count()} cores, Redis {redis_version}"
    )
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "redis": redis_version,
        },
        "latency": latency,
        "drain": {"tuitop": tuitop_runs, "huey": huey_runs, "ratio": ratio},
        "idle": idle,
    }
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


def huey_version() -> str:
    import huey

    return str(huey.__version__)


if __name__ == "__main__":
    main()
