"""Tuleap's task process and lanes, measured with the real pool on a private Redis.

1. **Task throughput**: messages run through a trivial task command (``cat``: reads the
   message on stdin, writes it back) by 2 workers, against the bare cost of starting that
   process on this machine — two processes running ``subprocess.run(["cat"], input=...)``
   in a loop, the least that starting the task costs — in the same run, alternated. A
   third loop starts the process the way a worker does (``PR_SET_PDEATHSIG`` armed by
   ``setpriv``, a process group of its own), to show what "no orphans" costs by itself.
2. **Head of line**: 2 workers, 4 jobs of 60 s (``tuleap.tracker.creation.jira``, a task
   that sleeps) queued ahead of a stream of 5 notifications/s for 2 minutes, sent through
   a real SMTP server: enqueue → mail received, p50/p99, with the default lanes and with
   ``$tuitop_lanes = ''`` (Tuleap's single list).

Prints a table and writes ``bench/results/tasks.json``. Run: ``python -m bench.task_bench``
(``--only throughput`` or ``--only head-of-line``; ``--seconds`` and ``--long`` shorten
the second).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.common import config_path, percentile, start_pool, stop, wait_for_workers
from tuitop.backends.redis import keys
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.embedded.smtpserver import SmtpServer
from tuitop.message import encode
from tuitop.notification import TOPIC, Mail, Notification
from tuitop.tasks import _die_with_parent, death_signal_wrapper

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "tasks.json"
JIRA = "tuleap.tracker.creation.jira"


def write_config(directory: Path, port: int, *, smtp_port: int = 0, lanes: bool = True) -> Path:
    lines = [
        "<?php",
        "$redis_server = '127.0.0.1';",
        f"$redis_port = {port};",
        "$sys_nb_backend_workers = 2;",
        "$sys_logger_level = 'warning';",
        "$sys_noreply = 'noreply@example.com';",
    ]
    if smtp_port:
        lines += ["$email_transport = 'smtp';", f"$email_relayhost = '127.0.0.1:{smtp_port}';"]
    if not lanes:
        lines.append("$tuitop_lanes = '';")
    path = config_path(directory)
    path.write_text("\n".join(lines) + "\n")
    return path


def task_message(index: int) -> bytes:
    payload = f'{{"artifact_id":{index},"changeset_id":{1000 + index}}}'
    return (
        f'{{"event_name":"tuleap.tracker.artifact.deletion","payload":{payload},'
        f'"_enqueue_ts":{time.time():.6f},"_queued_total":0}}'
    ).encode()


def done_count(client: redis.Redis) -> int:
    total = 0
    for key in client.scan_iter(match="tuitop:stats:*"):
        total += int(client.hget(key, "done") or 0)
    return total


PHP_TASK = ("php", "-r", "file_get_contents('php://stdin');")
"""An interpreter's start, nearer a real Tuleap task (which boots Tuleap's PHP besides)."""


def pool_throughput(
    directory: Path, server: EmbeddedRedis, count: int, command: tuple[str, ...]
) -> float:
    client = server.client()
    client.flushall()
    config = write_config(directory, server.port)
    pool = start_pool(directory, config, "--task-command", shlex.join(command))
    try:
        wait_for_workers(client, 2)
        pipe = client.pipeline(transaction=False)
        for index in range(count):
            pipe.lpush(keys.QUEUE, task_message(index))
        began = time.perf_counter()
        pipe.execute()
        while done_count(client) < count:
            time.sleep(0.01)
        elapsed = time.perf_counter() - began
    finally:
        stop(pool)
        client.close()
    return count / elapsed


def _bare_loop(count: int, as_a_worker: bool, command: tuple[str, ...]) -> None:
    raw = task_message(0)
    argv = list(command)
    options: dict[str, Any] = {}
    if as_a_worker:
        wrapper = death_signal_wrapper()
        argv = [*wrapper, *argv]
        options = {"process_group": 0}
        if not wrapper:
            options["preexec_fn"] = functools.partial(_die_with_parent, os.getpid())
    for _ in range(count):
        result = subprocess.run(argv, input=raw, capture_output=True, check=False, **options)
        assert result.returncode == 0


def bare_throughput(count: int, command: tuple[str, ...], *, as_a_worker: bool) -> float:
    """Two processes (as two workers) each starting ``cat`` ``count / 2`` times."""
    context = multiprocessing.get_context("spawn")
    loops = [
        context.Process(target=_bare_loop, args=(count // 2, as_a_worker, command))
        for _ in range(2)
    ]
    began = time.perf_counter()
    for loop in loops:
        loop.start()
    for loop in loops:
        loop.join()
        assert loop.exitcode == 0
    return (count // 2 * 2) / (time.perf_counter() - began)


def bench_throughput(
    directory: Path, server: EmbeddedRedis, command: tuple[str, ...], count: int, runs: int
) -> dict[str, Any]:
    results: dict[str, list[float]] = {"pool": [], "bare": [], "bare_as_a_worker": []}
    for _ in range(runs):  # alternated, so that the machine's noise falls on all alike
        results["bare"].append(bare_throughput(count, command, as_a_worker=False))
        results["bare_as_a_worker"].append(bare_throughput(count, command, as_a_worker=True))
        results["pool"].append(pool_throughput(directory, server, count, command))
    ratios = [p / b for p, b in zip(results["pool"], results["bare"], strict=True)]
    return {
        "command": list(command),
        "messages": count,
        "per_second": results,
        "pool_over_bare": ratios,
    }


def notification_message(index: int, enqueued: float) -> bytes:
    note = Notification(
        project_id=101,
        artifact_id=index,
        changeset_id=1000 + index,
        mails=(Mail((f"user{index}@example.com",), f"artifact #{index}", "changed"),),
    )
    return encode(TOPIC, note.to_payload(), enqueue_ts=enqueued)


def head_of_line(
    directory: Path, server: EmbeddedRedis, *, lanes: bool, seconds: float, long: float
) -> dict[str, Any]:
    client = server.client()
    client.flushall()
    smtp = SmtpServer().start()
    config = write_config(directory, server.port, smtp_port=smtp.port, lanes=lanes)
    pool = start_pool(directory, config, "--task-command", f"sleep {long:g}")
    sent: dict[int, float] = {}
    try:
        wait_for_workers(client, 2)
        for index in range(4):
            payload = f'{{"import":{index}}}'
            client.lpush(
                keys.QUEUE,
                f'{{"event_name":"{JIRA}","payload":{payload},"_enqueue_ts":{time.time():.6f},'
                f'"_queued_total":0}}'.encode(),
            )
        time.sleep(0.5)
        total = int(seconds * 5)
        began = time.perf_counter()
        for index in range(total):
            target = began + index / 5
            while (delay := target - time.perf_counter()) > 0:
                time.sleep(delay)
            sent[index] = time.time()
            client.lpush(keys.QUEUE, notification_message(index, sent[index]))
        received = smtp.wait_for(total, timeout=4 * long + 60)
    finally:
        # Two signals: a cold stop (the long tasks need not finish for the figures).
        pool.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        pool.send_signal(signal.SIGTERM)
        pool.wait(timeout=60)
        smtp.stop()
        client.close()
    waits = [
        message.received_at - sent[int(str(message.message["X-Tuleap-Artifact-Id"]))]
        for message in received
    ]
    return {
        "lanes": lanes,
        "notifications": total,
        "received": len(waits),
        "p50_s": percentile(waits, 0.50),
        "p99_s": percentile(waits, 0.99),
        "max_s": max(waits),
        "mean_s": statistics.fmean(waits),
    }


def throughput_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    rates = result["per_second"]
    rows = [
        (
            f"{result['messages']} messages through `{result['name']}`, 2 workers",
            "min / median / max",
        )
    ]
    for name, label in (
        ("bare", "  bare subprocess.run loop x2"),
        ("bare_as_a_worker", "  the same, armed as a worker (setpriv)"),
        ("pool", "  tuitop, task process per message"),
    ):
        values = sorted(rates[name])
        figures = (values[0], statistics.median(values), values[-1])
        rows.append((label, " / ".join(f"{v:.0f}" for v in figures) + " msg/s"))
    ratios = sorted(result["pool_over_bare"])
    rows.append(("  tuitop / bare, pair by pair", " / ".join(f"{r:.2f}" for r in ratios)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", choices=["throughput", "head-of-line"])
    parser.add_argument("--messages", type=int, default=2000, help="throughput: messages")
    parser.add_argument("--runs", type=int, default=3, help="throughput: runs of each")
    parser.add_argument("--seconds", type=float, default=120.0, help="head of line: stream")
    parser.add_argument("--long", type=float, default=60.0, help="head of line: a long job, s")
    args = parser.parse_args()
    document: dict[str, Any] = {}
    if RESULTS.exists():
        document = json.loads(RESULTS.read_text())
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as temp, EmbeddedRedis() as server:
        directory = Path(temp)
        redis_version = server.client().info("server")["redis_version"]
        if args.only in (None, "throughput"):
            commands = [("cat", ("cat",), args.messages)]
            if shutil.which("php"):
                commands.append(("php -r (reads stdin)", PHP_TASK, max(args.messages // 5, 20)))
            document["throughput"] = []
            for name, command, count in commands:
                result = {
                    "name": name,
                    **bench_throughput(directory, server, command, count, args.runs),
                }
                document["throughput"].append(result)
                rows += throughput_rows(result)
        if args.only in (None, "head-of-line"):
            runs = [
                head_of_line(directory, server, lanes=lanes, seconds=args.seconds, long=args.long)
                for lanes in (True, False)
            ]
            document["head_of_line"] = {"seconds": args.seconds, "long": args.long, "runs": runs}
            rows.append(
                (
                    f"4 jobs of {args.long:g} s, then 5 notifications/s for {args.seconds:g} s",
                    "enqueue → mail received",
                )
            )
            for run in runs:
                label = "  default lanes" if run["lanes"] else "  one list (Tuleap's)"
                rows.append(
                    (
                        label,
                        f"p50 {run['p50_s']:.3f} s, p99 {run['p99_s']:.3f} s, "
                        f"max {run['max_s']:.3f} s ({run['received']}/{run['notifications']})",
                    )
                )
    document["machine"] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "redis": redis_version,
    }
    width = max(len(label) for label, _ in rows)
    print(f"tuitop task benchmark — {os.cpu_count()} cores, Redis {redis_version}")
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    sys.exit(main())
