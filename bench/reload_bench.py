"""Time from saving the config file to the new worker count being in place.

Runs the real ``tuitop --no-ui`` on a private Redis, then 50 times writes the config file
(as an editor saves: a new file renamed over the old one) with another worker count, and
measures until exactly that many workers are alive and registered in Redis (a new worker
beats at its start; one that stops deregisters as it exits). Prints p50/p99/max and writes
``bench/results/reload.json``. Run: ``python -m bench.reload_bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from tuitop.backends.redis import keys
from tuitop.embedded.redisserver import EmbeddedRedis

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "reload.json"


def config_text(port: int, workers: int) -> str:
    return (
        "<?php\n$redis_server = '127.0.0.1';\n"
        f"$redis_port = {port};\n$sys_nb_backend_workers = {workers};\n"
        "$sys_logger_level = 'warning';\n$sys_noreply = 'noreply@example.com';\n"
    )


def save(path: Path, text: str) -> None:
    """As an editor saves: write a new file, rename it over the old one."""
    new = path.with_name(f".{path.name}.new")
    new.write_text(text)
    os.replace(new, path)


def registered(client: redis.Redis) -> int:
    members = [m.decode() for m in client.smembers(keys.WORKERS)]
    pipe = client.pipeline(transaction=False)
    for member in members:
        pipe.exists(keys.heartbeat(member))
    return sum(pipe.execute())


def wait_for(client: redis.Redis, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while registered(client) != count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} workers not in place after {timeout} s")
        time.sleep(0.002)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--edits", type=int, default=50)
    args = parser.parse_args()
    rng = random.Random(7)
    timings: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as temp, EmbeddedRedis() as server:
        directory = Path(temp)
        config = directory / "local.inc"
        current = 2
        config.write_text(config_text(server.port, current))
        client = server.client()
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(directory / "output.txt", "wb") as output:
            command = [sys.executable, "-m", "tuitop", "--no-ui", "--config", str(config)]
            pool = subprocess.Popen(
                [*command, "--log-file", str(directory / "worker_log")],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        try:
            wait_for(client, current)
            for _ in range(args.edits):
                wanted = rng.choice([n for n in range(1, 6) if n != current])
                time.sleep(0.3)
                began = time.perf_counter()
                save(config, config_text(server.port, wanted))
                wait_for(client, wanted)
                elapsed = time.perf_counter() - began
                timings.append({"from": current, "to": wanted, "seconds": elapsed})
                current = wanted
        finally:
            pool.send_signal(signal.SIGTERM)
            pool.wait(timeout=60)
        redis_version = client.info("server")["redis_version"]
    seconds = [t["seconds"] * 1000 for t in timings]
    ups = [t["seconds"] * 1000 for t in timings if t["to"] > t["from"]]
    downs = [t["seconds"] * 1000 for t in timings if t["to"] < t["from"]]
    summary = {
        "edits": len(timings),
        "p50_ms": percentile(seconds, 0.50),
        "p99_ms": percentile(seconds, 0.99),
        "max_ms": max(seconds),
        "mean_ms": statistics.fmean(seconds),
        "up_p50_ms": percentile(ups, 0.5) if ups else None,
        "down_p50_ms": percentile(downs, 0.5) if downs else None,
    }
    print(f"tuitop reload benchmark — {os.cpu_count()} cores, Redis {redis_version}")
    print(f"{len(timings)} saves (editor-style rename), worker count changed each time")
    print(
        f"  save → new count in place: p50 {summary['p50_ms']:.0f} ms, "
        f"p99 {summary['p99_ms']:.0f} ms, max {summary['max_ms']:.0f} ms"
    )
    print(
        f"  scale up p50 {summary['up_p50_ms']:.0f} ms, "
        f"scale down p50 {summary['down_p50_ms']:.0f} ms"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "summary": summary,
        "edits": timings,
    }
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
