"""Tuleap's database queue: tuitop against a loop written as Tuleap's DB worker is, and
against tuitop on Redis, in one run on this machine.

Three pools, each of 2 worker processes running an in-process job (a no-op for the
drain, a stamp of the enqueue → start time for the latency), alternated run by run:

* ``tuitop db``: the real ``tuitop --no-ui`` on a private MariaDB's ``async_events``;
* ``Tuleap's loop``: ``DBPersistentQueue::listen`` in Python — per message one transaction
  (``SELECT … ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED``, the job, ``DELETE``, commit),
  and a random 0-2 s sleep after an empty look; 2 processes, as Tuleap's 2 workers;
* ``tuitop redis``: the real ``tuitop --no-ui`` on a private Redis (bench.pool_bench).

Figures: drain of N pre-queued rows (they appear at once: one UPDATE of their queue name);
enqueue → start p50/p99 at a steady rate (rows inserted as Tuleap's front end inserts
them); what an idle pool costs — CPU of its processes and of the server, statements and
commits per second. Prints a table, writes ``bench/results/db.json``.
Run: ``python -m bench.db_bench`` (needs Debian's mariadb-server binaries).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pymysql

from bench.common import percentile, stop
from bench.pool_bench import bench_drain, bench_idle, bench_latency
from bench.stamp_handler import STAMP_FILE, record_wait
from tuitop.backends.db.queue import uuid7
from tuitop.backends.db.schema import QUEUE_NAME, create_tables
from tuitop.config import DatabaseSettings
from tuitop.embedded.mariadbserver import EmbeddedMariaDB, create_tuleap_database
from tuitop.embedded.redisserver import EmbeddedRedis

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "db.json"
INSERT = (
    "INSERT INTO async_events(id, queue_name, topic, payload, enqueue_timestamp, "
    "enqueue_timestamp_microsecond, nb_added_in_queue) VALUES (%s, %s, %s, %s, %s, %s, 0)"
)


def connect(settings: DatabaseSettings) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(
        host=settings.host,
        port=settings.port,
        user=settings.user,
        password=settings.password.reveal(),
        database=settings.name,
        autocommit=True,
    )


def reset(settings: DatabaseSettings) -> None:
    with connect(settings) as connection, connection.cursor() as cursor:
        create_tables(cursor)
        for table in (
            "async_events",
            "tuitop_processing",
            "tuitop_delayed",
            "tuitop_dead_letters",
            "tuitop_workers",
            "tuitop_pools",
            "tuitop_stats",
        ):
            cursor.execute(f"DELETE FROM {table}")


def row(topic: str, payload: dict[str, Any], queue_name: str = QUEUE_NAME) -> tuple[Any, ...]:
    now = time.time()
    return (uuid7(now), queue_name, topic, json.dumps(payload), int(now), int(now % 1 * 1e6))


# --- the pools -------------------------------------------------------------------------


def tuitop_pool(directory: Path, settings: DatabaseSettings, env: dict[str, str]) -> Any:
    config = directory / "database.inc"
    config.write_text(
        "<?php\n"
        f"$sys_dbhost = '{settings.host}'; $sys_dbport = {settings.port};\n"
        f"$sys_dbname = '{settings.name}'; $sys_dbuser = '{settings.user}';\n"
        f"$sys_dbpasswd = '{settings.password.reveal()}';\n"
        "$sys_nb_backend_workers = 2; $sys_logger_level = 'warning';\n"
        # One lane: both workers on everything, as Tuleap's two.
        "$tuitop_lanes = '';\n"
    )
    command = [
        sys.executable,
        "-m",
        "tuitop",
        "--no-ui",
        "--config",
        str(config),
        "--log-file",
        str(directory / "worker_log"),
        "--handlers",
        "bench.stamp_handler",
    ]
    output = open(directory / "tuitop.txt", "ab")  # noqa: SIM115 - kept for the child
    return subprocess.Popen(
        command,
        stdout=output,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
    )


def tuleap_pool(directory: Path, settings: DatabaseSettings, env: dict[str, str]) -> Any:
    """Two processes of :func:`tuleap_worker`, under one parent (stopped together)."""
    code = (
        "import multiprocessing, sys\n"
        "from bench.db_bench import tuleap_worker, settings_from\n"
        "settings = settings_from(sys.argv[1])\n"
        "workers = [multiprocessing.Process(target=tuleap_worker, args=(settings,))"
        " for _ in range(2)]\n"
        "[w.start() for w in workers]\n[w.join() for w in workers]\n"
    )
    document = json.dumps(settings_document(settings))
    output = open(directory / "tuleap.txt", "ab")  # noqa: SIM115 - kept for the child
    return subprocess.Popen(
        [sys.executable, "-c", code, document],
        stdout=output,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )


def settings_document(settings: DatabaseSettings) -> dict[str, Any]:
    return {
        "host": settings.host,
        "port": settings.port,
        "name": settings.name,
        "user": settings.user,
        "password": settings.password.reveal(),
    }


def settings_from(text: str) -> DatabaseSettings:
    from tuitop.config import Secret

    fields = json.loads(text)
    return DatabaseSettings(**{**fields, "password": Secret(fields["password"])})


def tuleap_worker(settings: DatabaseSettings) -> None:
    """Tuleap's ``DBPersistentQueue::listen``: one message per transaction, the row
    locked while its job runs, a random 0-2 s sleep after finding none."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    connection = connect(settings)
    connection.autocommit(False)
    path = os.environ.get(STAMP_FILE)
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id, topic, payload, enqueue_timestamp, enqueue_timestamp_microsecond, "
                "nb_added_in_queue FROM async_events WHERE queue_name = %s ORDER BY id "
                "LIMIT 1 FOR UPDATE SKIP LOCKED",
                (QUEUE_NAME,),
            )
            found = cursor.fetchone()
            if found is None:
                connection.commit()
                time.sleep(random.randint(0, 2_000_000) / 1e6)
                continue
            started = time.time()
            payload = json.loads(found[2])
            if path and found[1] == "bench.stamp":
                record_wait(path, started - float(payload["enqueued"]))
            cursor.execute("DELETE FROM async_events WHERE id = %s", (found[0],))
            connection.commit()


POOLS = {"tuitop db": tuitop_pool, "Tuleap's loop": tuleap_pool}


def stop_pool(process: Any) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        process.send_signal(signal.SIGTERM)
    else:
        pass
    process.wait(timeout=60)


def stop_any(name: str, process: Any) -> None:
    if name == "Tuleap's loop":
        stop_pool(process)
    else:
        stop(process)


def wait_ready(name: str, settings: DatabaseSettings) -> None:
    if name != "tuitop db":
        time.sleep(2.5)  # both of Tuleap's processes have looked once and sleep
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with connect(settings) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT beat FROM tuitop_workers")
            states = [json.loads(beat).get("state") for (beat,) in cursor.fetchall()]
        if states.count("idle") >= 2:
            return
        time.sleep(0.05)
    raise RuntimeError("tuitop's 2 workers did not show up idle")


# --- the figures -----------------------------------------------------------------------


def drain(name: str, directory: Path, settings: DatabaseSettings, count: int) -> dict[str, Any]:
    reset(settings)
    with connect(settings) as connection, connection.cursor() as cursor:
        rows = [row("tuitop.noop", {"id": n}, "bench_staging") for n in range(count)]
        for start in range(0, count, 1000):
            cursor.executemany(INSERT, rows[start : start + 1000])
    process = POOLS[name](directory, settings, dict(os.environ))
    try:
        wait_ready(name, settings)
        with connect(settings) as connection, connection.cursor() as cursor:
            begin = time.perf_counter()
            cursor.execute("UPDATE async_events SET queue_name = %s", (QUEUE_NAME,))
            while True:
                cursor.execute(
                    "SELECT (SELECT COUNT(*) FROM async_events) + "
                    "(SELECT COUNT(*) FROM tuitop_processing)"
                )
                if cursor.fetchone()[0] == 0:
                    break
                time.sleep(0.01)
            elapsed = time.perf_counter() - begin
    finally:
        stop_any(name, process)
    return {"messages": count, "seconds": elapsed, "per_second": count / elapsed}


def latency(
    name: str, directory: Path, settings: DatabaseSettings, rate: float, seconds: float
) -> dict[str, Any]:
    reset(settings)
    stamps = directory / f"stamps-{name.split()[0]}.txt"
    stamps.unlink(missing_ok=True)
    env = {**os.environ, STAMP_FILE: str(stamps)}
    process = POOLS[name](directory, settings, env)
    try:
        wait_ready(name, settings)
        total = int(rate * seconds)
        with connect(settings) as connection, connection.cursor() as cursor:
            begin = time.perf_counter()
            for index in range(total):
                target = begin + index / rate
                while (delay := target - time.perf_counter()) > 0:
                    time.sleep(delay)
                cursor.execute(INSERT, row("bench.stamp", {"id": index, "enqueued": time.time()}))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if stamps.exists() and len(stamps.read_text().splitlines()) >= total:
                break
            time.sleep(0.1)
    finally:
        stop_any(name, process)
    waits = [float(line) * 1000 for line in stamps.read_text().splitlines()]
    return {
        "messages": total,
        "received": len(waits),
        "p50_ms": percentile(waits, 0.50),
        "p99_ms": percentile(waits, 0.99),
        "max_ms": max(waits),
    }


def server_status(settings: DatabaseSettings) -> dict[str, int]:
    with connect(settings) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions', 'Com_commit', "
            "'Innodb_data_fsyncs')"
        )
        return {name: int(value) for name, value in cursor.fetchall()}


def idle(
    name: str,
    directory: Path,
    settings: DatabaseSettings,
    server: EmbeddedMariaDB,
    seconds: float,
) -> dict[str, Any]:
    reset(settings)
    process = POOLS[name](directory, settings, dict(os.environ))
    try:
        wait_ready(name, settings)
        time.sleep(2)
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(True)]
        database = psutil.Process(server.process.pid)  # type: ignore[union-attr]
        cpu = sum(sum(p.cpu_times()[:2]) for p in family)
        server_cpu = sum(database.cpu_times()[:2])
        before = server_status(settings)
        time.sleep(seconds)
        after = server_status(settings)
        cpu = sum(sum(p.cpu_times()[:2]) for p in family) - cpu
        server_cpu = sum(database.cpu_times()[:2]) - server_cpu
    finally:
        stop_any(name, process)
    # The two status reads are statements too: left out.
    return {
        "seconds": seconds,
        "cpu_percent": 100 * cpu / seconds,
        "server_cpu_percent": 100 * server_cpu / seconds,
        "statements_per_second": (after["Questions"] - before["Questions"] - 2) / seconds,
        "commits_per_second": (after["Com_commit"] - before["Com_commit"]) / seconds,
        "fsyncs_per_second": (after["Innodb_data_fsyncs"] - before["Innodb_data_fsyncs"]) / seconds,
    }


def triple(values: list[float]) -> str:
    ordered = sorted(values)
    return " / ".join(
        f"{value:,.0f}" for value in (ordered[0], ordered[len(ordered) // 2], ordered[-1])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--drain", type=int, default=5000, help="drain: rows")
    parser.add_argument("--runs", type=int, default=3, help="drain: alternated runs")
    parser.add_argument("--rate", type=float, default=200.0, help="latency: rows/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency: duration")
    parser.add_argument("--idle", type=float, default=20.0, help="idle: seconds measured")
    args = parser.parse_args()
    results: dict[str, Any] = {"drain": {}, "latency": {}, "idle": {}}
    names = [*POOLS, "tuitop redis"]
    with tempfile.TemporaryDirectory() as temp, EmbeddedRedis() as redis_server:
        directory = Path(temp)
        mariadb = EmbeddedMariaDB(directory / "mariadb").start()
        try:
            settings = create_tuleap_database(mariadb, "tuleap", "tuleapadm", "bench-password")
            version = mariadb.connect().server_version
            for name in names:
                results["drain"][name] = []
            for _ in range(args.runs):
                for name in names:
                    if name == "tuitop redis":
                        run = bench_drain(directory, redis_server, args.drain)
                    else:
                        run = drain(name, directory, settings, args.drain)
                    results["drain"][name].append(run)
                    print(f"drain {name}: {run['per_second']:,.0f} msg/s", file=sys.stderr)
            for name in names:
                if name == "tuitop redis":
                    found = bench_latency(directory, redis_server, args.rate, args.seconds)
                else:
                    found = latency(name, directory, settings, args.rate, args.seconds)
                results["latency"][name] = found
                print(f"latency {name}: p99 {found['p99_ms']:.1f} ms", file=sys.stderr)
            for name in POOLS:
                results["idle"][name] = idle(name, directory, settings, mariadb, args.idle)
            results["idle"]["tuitop redis"] = bench_idle(directory, redis_server, args.idle)
        finally:
            mariadb.close()
    rows = [(f"drain {args.drain:,} rows, 2 workers (min / median / max of {args.runs})", "")]
    for name in names:
        rows.append(
            (f"  {name}", triple([r["per_second"] for r in results["drain"][name]]) + " msg/s")
        )
    rows.append(
        (f"enqueue → start at {args.rate:.0f}/s for {args.seconds:.0f} s", "p50 / p99 / max")
    )
    for name in names:
        lat = results["latency"][name]
        rows.append(
            (f"  {name}", f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} / {lat['max_ms']:.1f} ms")
        )
    rows.append(
        (f"idle, 2 workers ({args.idle:.0f} s)", "client CPU · server CPU · stmts/s · fsyncs/s")
    )
    for name in POOLS:
        cost = results["idle"][name]
        rows.append(
            (
                f"  {name}",
                f"{cost['cpu_percent']:.2f} % · {cost['server_cpu_percent']:.2f} % · "
                f"{cost['statements_per_second']:.1f} · {cost['fsyncs_per_second']:.1f}",
            )
        )
    redis_idle = results["idle"]["tuitop redis"]
    rows.append(
        (
            "  tuitop redis",
            f"{redis_idle['cpu_percent']:.2f} % · Redis "
            f"{redis_idle['redis_commands_per_second']:.1f} commands/s",
        )
    )
    width = max(len(label) for label, _ in rows)
    print(
        f"tuitop database queue benchmark — {platform.node()}, {os.cpu_count()} cores, "
        f"MariaDB {version}"
    )
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    results["machine"] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "mariadb": version,
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
