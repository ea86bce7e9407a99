"""What one refresh of a view costs as the fleet grows: pools and workers registered in one
Redis, written by the real write paths (a worker's own beat, a pool's heartbeat listing its
workers), with the stats buckets of the last five minutes empty or full (every bucket at
the cap of topic names, ``tuitop.stats.MAX_TOPICS``).

For 1 pool of 2 workers, 10 pools of 10, 100 pools of 10 (1,000 workers): the time of one
snapshot (everything the header, the lanes and the workers table read) and of one stats
window (what the charts and the topics table read), p50/p99 over the runs, and the Redis
commands and round trips each takes (Redis' own commandstats).

Prints a table and writes ``bench/results/snapshot.json``. Run:
``python -m bench.snapshot_bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import redis

from bench.common import command_count, percentile
from tuitop.backends.base import RetryPolicy
from tuitop.backends.redis.channel import RedisChannel
from tuitop.backends.redis.pool import RedisPoolStore
from tuitop.backends.redis.snapshot import take_snapshot
from tuitop.backends.redis.stats import flush_into, read_buckets
from tuitop.beats import PoolBeat, WorkerBeat
from tuitop.config import RedisSettings
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.lanes import DEFAULT_LANE, LaneSet
from tuitop.stats import MAX_TOPICS, STATS_BUCKET_SECONDS, StatsBatch, summarize

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "snapshot.json"
FLEETS = ((1, 2), (10, 10), (100, 10))
"""(pools, workers per pool)."""
WINDOW = 300


def register_fleet(server: EmbeddedRedis, pools: int, per_pool: int) -> None:
    """Each worker beats once through its channel; each pool publishes its heartbeat
    listing its workers, as a running pool does."""
    settings = RedisSettings(host="127.0.0.1", port=server.port)
    channel = RedisChannel(
        settings,
        lanes=LaneSet(),
        serves=(DEFAULT_LANE,),
        retry=RetryPolicy(),
        client_name="bench:workers",
        socket_timeout=10,
    )
    now = time.time()
    for number in range(pools):
        name = f"host-{number:03d}"
        store = RedisPoolStore(settings, pool_name=name, retry=RetryPolicy(), socket_timeout=10)
        ids = []
        for slot in range(per_pool):
            worker_id = f"{name}/{slot}#{10_000 + slot}"
            ids.append(worker_id)
            beat = WorkerBeat(
                host=name,
                pid=10_000 + slot,
                pool=name,
                slot=slot,
                state="busy" if slot % 2 else "idle",
                since=now,
                topic="tuleap.tracker.artifact.notify" if slot % 2 else "",
                done=12_345,
                processed=345,
                max_messages=1000,
                cpu=12.5,
                rss=52_000_000,
                beat=now,
            )
            channel.beat(worker_id, beat, ttl=600)
        pool_beat = PoolBeat(
            host=name,
            pid=1000 + number,
            wanted=per_pool,
            configured=per_pool,
            running=per_pool,
            files=("/etc/tuleap/conf/local.inc", "/etc/tuleap/conf/redis.inc"),
            workers=tuple(ids),
            beat=now,
        )
        store.publish(name, pool_beat, 600, set(), stopping=False)
        store.close()
    channel.close()


def fill_topics(client: redis.Redis, now: float) -> None:
    """Every bucket of the window at the cap of topic names, each with waits and runs."""
    for age in range(0, WINDOW + 10, STATS_BUCKET_SECONDS):
        batch = StatsBatch()
        for number in range(MAX_TOPICS):
            topic = f"tuleap.plugin-{number:02d}.event"
            for sample in range(5):
                batch.topic(topic, wait=0.001 * (sample + 1), run=0.01 * (sample + 1))
        pipe = client.pipeline(transaction=False)
        flush_into(batch, pipe, now - age)
        pipe.execute()


def measure(client: redis.Redis, runs: int) -> dict[str, Any]:
    """Times ``runs`` snapshots and stats windows; counts the commands of one of each."""
    figures: dict[str, Any] = {}
    for what, read in (
        ("snapshot", lambda: take_snapshot(client)),
        ("stats", lambda: summarize(read_buckets(client, time.time(), WINDOW), WINDOW)),
    ):
        read()  # warm: connections, scripts
        before = command_count(client)
        read()
        after = command_count(client)
        calls = {name: after.get(name, 0) - before.get(name, 0) for name in after}
        calls["info"] = calls.get("info", 0) - 1  # the second INFO commandstats
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            read()
            times.append((time.perf_counter() - started) * 1000)
        figures[what] = {
            "p50_ms": percentile(times, 0.50),
            "p99_ms": percentile(times, 0.99),
            "commands": sum(count for count in calls.values() if count > 0),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="reads of each kind per case")
    args = parser.parse_args()
    rows = []
    with EmbeddedRedis() as server:
        client = server.client()
        version = client.info("server")["redis_version"]
        for pools, per_pool in FLEETS:
            for topics in (False, True):
                client.flushall()
                register_fleet(server, pools, per_pool)
                if topics:
                    fill_topics(client, time.time())
                figures = measure(client, args.runs)
                rows.append(
                    {"pools": pools, "workers": pools * per_pool, "topics_full": topics} | figures
                )
    print(
        f"one view refresh — {platform.node()}, {os.cpu_count()} cores, Redis {version}, "
        f"{args.runs} reads each"
    )
    header = (
        f"{'pools':>5} {'workers':>7} {'topic buckets':>13}   "
        f"{'snapshot p50/p99 ms':>19} {'cmds':>5}   {'stats p50/p99 ms':>16} {'cmds':>5}"
    )
    print(header)
    for row in rows:
        snap, stats = row["snapshot"], row["stats"]
        print(
            f"{row['pools']:>5} {row['workers']:>7} {'full' if row['topics_full'] else 'empty':>13}"
            f"   {snap['p50_ms']:>8.2f} / {snap['p99_ms']:>8.2f} {snap['commands']:>5}"
            f"   {stats['p50_ms']:>7.2f} / {stats['p99_ms']:>6.2f} {stats['commands']:>5}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "redis": version,
        },
        "runs": args.runs,
        "rows": rows,
    }
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
