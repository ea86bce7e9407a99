"""What the terminal UI costs, measured on a private Redis with the real commands.

1. One snapshot (everything a refresh reads) with 10 and with 1,000,000 messages queued:
   Redis commands and round trips per snapshot (from Redis's own commandstats) and the
   time it takes (p50/p99 over 200 snapshots) — the same whatever the queue length.
2. Drain of 100,000 pre-queued no-op messages by a pool of 2 workers, without and with the
   real ``tuitop top`` attached in a tmux terminal (refreshing every 0.5 s), alternated
   run by run; also the UI's own CPU time during the drain.
3. The UI's CPU watching an idle pool of 2 workers (its default lanes in service) for 10 s,
   twice.

Prints a table and writes ``bench/results/ui.json``. Run: ``python -m bench.ui_bench``
(needs tmux on the PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import redis

from bench.common import (
    command_count,
    percentile,
    start_pool,
    stop,
    wait_for_workers,
    write_config,
)
from bench.pool_bench import bench_drain
from tuitop.backends.redis import keys
from tuitop.backends.redis.snapshot import take_snapshot
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.message import encode

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "ui.json"
TMUX_SOCKET = f"tuitop-bench-{os.getpid()}"


def fill(client: redis.Redis, count: int) -> None:
    client.delete(keys.QUEUE)
    chunk = 10_000
    for start in range(0, count, chunk):
        messages = [
            encode("tuitop.noop", {"id": n}) for n in range(start, min(count, start + chunk))
        ]
        client.lpush(keys.QUEUE, *messages)


def register_workers(client: redis.Redis, count: int) -> None:
    """Heartbeats as two live workers publish them: a snapshot reads one hash and one list
    length per worker."""
    for slot in range(count):
        worker_id = f"bench/{slot}#{1000 + slot}"
        client.hset(
            keys.heartbeat(worker_id),
            mapping={"host": "bench", "pid": 1000 + slot, "state": "idle", "beat": time.time()},
        )
        client.sadd(keys.WORKERS, worker_id)


def bench_snapshot(server: EmbeddedRedis, queued: int, takes: int = 200) -> dict[str, Any]:
    client = server.client()
    client.flushall()
    register_workers(client, 2)
    fill(client, queued)
    assert client.llen(keys.QUEUE) == queued
    viewer = server.client()
    take_snapshot(viewer)  # connection made, scripts warm
    before = command_count(client)
    durations = []
    for _ in range(takes):
        begin = time.perf_counter()
        snapshot = take_snapshot(viewer)
        durations.append((time.perf_counter() - begin) * 1000)
    after = command_count(client)
    assert snapshot.queue.waiting == queued
    calls = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    calls["info"] = calls.get("info", 0) - 1  # the second command_count's own INFO
    commands = sum(calls.values()) / takes
    viewer.close()
    client.flushall()
    client.close()
    return {
        "queued": queued,
        "snapshots": takes,
        "redis_commands_per_snapshot": commands,
        "round_trips_per_snapshot": 2,
        "p50_ms": percentile(durations, 0.50),
        "p99_ms": percentile(durations, 0.99),
    }


def tmux(*args: str) -> str:
    done = subprocess.run(
        ["tmux", "-L", TMUX_SOCKET, *args], capture_output=True, text=True, check=True
    )
    return done.stdout


def start_ui(config: Path) -> psutil.Process:
    env = f"PYTHONPATH={REPO}"
    command = f"{env} {sys.executable} -m tuitop top --config {config} --log-file ''"
    tmux("new-session", "-d", "-s", "ui", "-x", "132", "-y", "42", command)
    deadline = time.monotonic() + 30
    while "Workers" not in tmux("capture-pane", "-p", "-t", "ui"):
        if time.monotonic() > deadline:
            raise RuntimeError("tuitop top did not show up in tmux")
        time.sleep(0.1)
    pane = int(tmux("display-message", "-p", "-t", "ui", "#{pane_pid}").strip())
    shell = psutil.Process(pane)
    children = shell.children(recursive=True)
    return children[-1] if children else shell


def stop_ui() -> None:
    subprocess.run(["tmux", "-L", TMUX_SOCKET, "kill-server"], capture_output=True)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def bench_idle_ui(
    directory: Path, server: EmbeddedRedis, config: Path, seconds: float
) -> dict[str, Any]:
    client = server.client()
    client.flushall()
    pool = start_pool(directory, config)
    try:
        wait_for_workers(client, 2)
        ui = start_ui(config)
        try:
            time.sleep(3)  # past its first pictures
            before = cpu_seconds(ui)
            time.sleep(seconds)
            used = cpu_seconds(ui) - before
        finally:
            stop_ui()
    finally:
        stop(pool)
        client.close()
    return {"seconds": seconds, "ui_cpu_seconds": used, "ui_cpu_percent": 100 * used / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="drains with and without the UI")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--queued", type=int, default=1_000_000, help="the long queue")
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        raise SystemExit("ui_bench needs tmux (the UI runs in a real terminal)")
    with (
        tempfile.TemporaryDirectory(prefix="tuitop-ui-bench-") as temp,
        EmbeddedRedis(directory=Path(temp) / "redis") as server,
    ):
        directory = Path(temp)
        redis_version = server.client().info("server")["redis_version"]
        snapshots = [bench_snapshot(server, 10), bench_snapshot(server, args.queued)]
        without: list[dict[str, Any]] = []
        attached: list[dict[str, Any]] = []
        config = write_config(directory, server.port, 2)
        for _ in range(args.runs):
            without.append(bench_drain(directory, server, args.messages))
            ui = start_ui(config)
            try:
                before = cpu_seconds(ui)
                result = bench_drain(directory, server, args.messages)
                result["ui_cpu_seconds"] = cpu_seconds(ui) - before
                attached.append(result)
            finally:
                stop_ui()
        idle = [bench_idle_ui(directory, server, config, 10.0) for _ in range(2)]

    def best(runs: list[dict[str, Any]]) -> float:
        return max(run["per_second"] for run in runs)

    def median(runs: list[dict[str, Any]]) -> float:
        return statistics.median(run["per_second"] for run in runs)

    report = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "redis": redis_version,
        },
        "snapshot": snapshots,
        "drain": {
            "messages": args.messages,
            "workers": 2,
            "ui_interval_s": 0.5,
            "without_ui": without,
            "with_ui": attached,
            "best_without": best(without),
            "best_with": best(attached),
            "median_without": median(without),
            "median_with": median(attached),
        },
        "idle_ui": idle,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{'snapshot':<26}{'queued':>12}{'commands':>10}{'round trips':>13}"
        f"{'p50 ms':>9}{'p99 ms':>9}"
    )
    for row in snapshots:
        print(
            f"{'':<26}{row['queued']:>12,}{row['redis_commands_per_snapshot']:>10.1f}"
            f"{row['round_trips_per_snapshot']:>13}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
        )
    print(f"\n{'drain ' + format(args.messages, ',') + ' msgs, 2 workers':<34}{'msg/s runs':<40}")
    for label, runs in (("without the UI", without), ("with tuitop top attached", attached)):
        rates = ", ".join(f"{run['per_second']:,.0f}" for run in runs)
        print(f"  {label:<32}{rates}  (median {median(runs):,.0f})")
    ui_cpu = [run["ui_cpu_seconds"] for run in attached]
    print(f"  UI CPU during a drain: {', '.join(f'{s:.2f} s' for s in ui_cpu)}")
    shares = ", ".join(f"{run['ui_cpu_percent']:.1f} %" for run in idle)
    print(f"\nthe UI watching an idle pool (10 s, 0.5 s refresh): {shares} of one core")
    print(f"\nwritten to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
