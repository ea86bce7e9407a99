"""Where a message's wait goes at a steady trickle: the real pool (``python -m tuitop
--no-ui``, default lanes and ``--max-messages``) on a private Redis, fed at ``--rate``
messages a second, each message's wait split in two by a stopwatch around the worker's
blocking take (:mod:`bench.wait_probe_handler`):

* **enqueue → the worker's BLMOVE returned**: the producer's LPUSH, Redis handing the
  message to the blocked worker, the kernel waking that process, redis-py reading the
  reply — the path every Redis pool shares (the bare loop's included);
* **BLMOVE returned → the handler starts**: tuitop's own code (routing, decoding, the
  lease check, the watchdog's guard, the status slots).

Prints p50 / p90 / p99 / max of each and of the whole, how the slowest 1 % split between
the two, and how many of them came within 100 ms of a worker replaced after
``--max-messages``; writes ``bench/results/wait-profile.json``. Run:
``python -m bench.wait_profile [--messages 4000] [--rate 200] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.common import REPO, percentile, start_pool, stop, wait_for_workers, write_config
from bench.peer_machine import newest_redis_server
from bench.wait_probe_handler import PROBE_ENV, TOPIC
from tuitop.backends.redis import keys
from tuitop.embedded.redisserver import EmbeddedRedis, find_redis_server
from tuitop.message import encode

RECYCLE_WINDOW = 0.1


def produce(client: redis.Redis, count: int, rate: float) -> None:
    """``count`` messages at ``rate`` a second, each stamped just before its LPUSH."""
    start = time.perf_counter()
    for index in range(count):
        delay = start + index / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        client.lpush(keys.QUEUE, encode(TOPIC, {"enqueued": time.time()}))


def read_probe(path: Path) -> list[tuple[float, float, float, int]]:
    """(enqueued, wait returned or 0, handler start, pid) per message."""
    rows = []
    for line in path.read_text().splitlines():
        enqueued, _called, returned, started, pid = line.split()
        rows.append((float(enqueued), float(returned), float(started), int(pid)))
    return rows


def figures(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(values, 0.50),
        "p90_ms": percentile(values, 0.90),
        "p99_ms": percentile(values, 0.99),
        "max_ms": max(values),
    }


def analyse(rows: list[tuple[float, float, float, int]]) -> dict[str, Any]:
    woken = [row for row in rows if row[1] > 0]
    total = [1000 * (started - enqueued) for enqueued, _, started, _ in rows]
    to_take = [1000 * (returned - enqueued) for enqueued, returned, _, _ in woken]
    to_handler = [1000 * (started - returned) for _, returned, started, _ in woken]
    # A worker's first message: when its predecessor left (after --max-messages).
    firsts: dict[int, float] = {}
    for _, _, started, pid in rows:
        firsts.setdefault(pid, started)
    starts = sorted(firsts.values())[1:] if len(firsts) > 1 else []
    threshold = percentile(total, 0.99)
    slow = [row for row, wait in zip(rows, total, strict=True) if wait >= threshold]
    near_recycle = sum(
        1 for row in slow if any(0 <= start - row[0] <= RECYCLE_WINDOW for start in starts)
    )
    slow_woken = [row for row in slow if row[1] > 0]
    return {
        "messages": len(rows),
        "woken_by_blmove": len(woken),
        "taken_in_a_batch": len(rows) - len(woken),
        "worker_processes": len(firsts),
        "enqueue_to_handler": figures(total),
        "enqueue_to_blmove_return": figures(to_take),
        "blmove_return_to_handler": figures(to_handler),
        "slowest_1pc": {
            "count": len(slow),
            "near_a_recycle": near_recycle,
            "mean_enqueue_to_blmove_return_ms": (
                sum(1000 * (r - e) for e, r, _, _ in slow_woken) / len(slow_woken)
                if slow_woken
                else 0.0
            ),
            "mean_blmove_return_to_handler_ms": (
                sum(1000 * (s - r) for _, r, s, _ in slow_woken) / len(slow_woken)
                if slow_woken
                else 0.0
            ),
        },
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"{result['messages']} messages at {result['rate']:g}/s, {result['workers']} workers "
        f"({result['worker_processes']} processes: recycled after --max-messages); "
        f"{result['woken_by_blmove']} woken by BLMOVE, {result['taken_in_a_batch']} in a batch",
        f"{'segment':<34} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}",
    ]
    for name, key in (
        ("enqueue -> handler (the wait)", "enqueue_to_handler"),
        ("enqueue -> BLMOVE returned", "enqueue_to_blmove_return"),
        ("BLMOVE returned -> handler", "blmove_return_to_handler"),
    ):
        row = result[key]
        lines.append(
            f"{name:<34} {row['p50_ms']:>8.3f} {row['p90_ms']:>8.3f} "
            f"{row['p99_ms']:>8.3f} {row['max_ms']:>8.2f}"
        )
    slow = result["slowest_1pc"]
    lines.append(
        f"slowest 1 % ({slow['count']}): {slow['near_a_recycle']} within "
        f"{RECYCLE_WINDOW * 1000:.0f} ms of a worker's replacement; woken ones spent "
        f"{slow['mean_enqueue_to_blmove_return_ms']:.2f} ms before the BLMOVE returned, "
        f"{slow['mean_blmove_return_to_handler_ms']:.3f} ms in tuitop after it (means)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wait_profile")
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, default=REPO / "bench/results/wait-profile.json")
    args = parser.parse_args(argv)
    binary = newest_redis_server() or find_redis_server()
    with tempfile.TemporaryDirectory() as name, EmbeddedRedis(binary=binary) as server:
        directory = Path(name)
        probe = directory / "probe.txt"
        os.environ[PROBE_ENV] = str(probe)  # the pool's processes inherit it
        client = server.client()
        config = write_config(directory, server.port, args.workers)
        pool = start_pool(directory, config, "--handlers", "bench.wait_probe_handler")
        try:
            wait_for_workers(client, args.workers)
            time.sleep(1.0)
            produce(client, args.messages, args.rate)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if probe.exists() and len(probe.read_bytes().splitlines()) >= args.messages:
                    break
                time.sleep(0.05)
        finally:
            stop(pool)
        result = {"rate": args.rate, "workers": args.workers, **analyse(read_probe(probe))}
    print(report(result))
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
