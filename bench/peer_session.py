"""One pool, started on the benchmark's Redis, warmed up, measured, and killed.

The harness talks to Redis through a :class:`Meter`, which counts every command it sends,
so that a pool's own commands are Redis' ``total_commands_processed`` delta minus the
harness' (checked once by :meth:`Meter.calibrate`: Redis counts MULTI and EXEC, each
queued command, and each command a Lua script calls).

A :class:`Session` (a context manager) starts the pool in a process group of its own,
waits for it to take jobs (a warm-up of roundtrip jobs through the pool's own client),
measures what it is asked to, and kills the whole group on the way out, whatever happens.
Each measure returns a dict of plain figures (JSON-ready).

How jobs reach a pool for a drain: the pool's own client (:mod:`bench.peer_tasks`) stages
them on database 1 under the very keys the pool reads; the keys other than the pool's
:attr:`~bench.peer_pools.Pool.activation` keys are moved into database 0 beforehand; the
clock starts when one MULTI/EXEC MOVEs the activation keys in (a MOVE wakes a client
blocked on the key, as an LPUSH does). Done: for ``noop``, when the pool's
:meth:`~bench.peer_pools.Pool.pending` commands add up to 0; for ``roundtrip``, when the
jobs' counter reaches the count. Polls are one pipeline every 2 ms, counted.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from bench.common import REPO, percentile
from bench.peer_pools import Command, Pool, PoolContext
from bench.peer_procs import ProcessGroup
from bench.peer_tasks import peer_jobs

POLL_SECONDS = 0.002
WARM_JOBS = 20
WARM_TIMEOUT = 60.0
SETTLE_SECONDS = 1.0
STALL_SECONDS = 60.0
"""A drain, or the wait for the steady phase's last jobs, fails (or gives up) after this
long without one job more done."""
STAGING_DB = 1
MOVE_BATCH = 1000
LOG_TAIL = 15


NOTES = {
    "staging": (
        "the pool's own client stages the jobs on database 1 under the pool's own keys; all "
        "but the activation keys are moved into database 0 first; the drain's clock starts "
        "at one MULTI/EXEC that MOVEs the activation keys in, once the pool is idle"
    ),
    "completion": (
        "noop: done when the pool's pending commands (its queue plus its own in-flight "
        "record: processing lists, unacked hash, started registry...) add up to 0; "
        "roundtrip: done when the jobs' INCR counter reaches the count. Huey keeps no "
        "in-flight record and Celery acks when a child starts a job, so for those two a "
        "noop drain ends when the last job starts (at most one a worker still running)"
    ),
    "redis_commands": (
        "INFO total_commands_processed over the drain minus the harness' own commands "
        "(counted as sent: the MOVE transaction, one poll pipeline every 2 ms); commands "
        "run inside Lua scripts count, and so does the pool's background traffic "
        "(heartbeats...) during the drain"
    ),
    "cpu": (
        "user + system of every process of the pool's tree (its supervisor included, reaped "
        "children included) over the drain, divided by the jobs; clock ticks of 10 ms"
    ),
    "rss": (
        "resident set of each process of the tree right after the drain; the sum counts "
        "pages that forked processes share once per process"
    ),
    "wait": (
        "the producer (the pool's own client) reads time.time() just before its enqueue "
        "call and passes it in the job's arguments; the job, at its start, appends "
        "time.time() minus it to a file"
    ),
    "idle": (
        "after a warm-up of 20 roundtrip jobs and 1 s of quiet: CPU % of the pool's tree "
        "and Redis commands a second (the harness' one INFO subtracted)"
    ),
}
"""How each figure is taken, for the results file."""


class PoolError(RuntimeError):
    """The pool did not start, did not take its jobs in time, or died."""


class Meter:
    """The harness' connections to the benchmark's Redis (databases 0 and 1) and the
    count of the commands they sent (:attr:`sent`)."""

    def __init__(self, port: int) -> None:
        self.db0 = redis.Redis(host=peer_jobs.HOST, port=port, db=0)
        self.db1 = redis.Redis(host=peer_jobs.HOST, port=port, db=STAGING_DB)
        self.sent = 0

    def total_commands(self) -> int:
        """Redis' ``total_commands_processed`` (this INFO not included: it counts in the
        next reading)."""
        self.sent += 1
        return int(self.db0.info("stats")["total_commands_processed"])

    def run(self, commands: list[Command], *, db: int = 0, transaction: bool = False) -> Any:
        """``commands`` in one pipeline (a MULTI/EXEC with ``transaction``); the replies."""
        client = self.db1 if db == STAGING_DB else self.db0
        pipe = client.pipeline(transaction=transaction)
        for command in commands:
            pipe.execute_command(*command)
        self.sent += len(commands) + (2 if transaction else 0)
        return pipe.execute()

    def command(self, *args: Any) -> Any:
        self.sent += 1
        return self.db0.execute_command(*args)

    def calibrate(self) -> None:
        """Checks the counting on a Redis nobody else uses (yet): RuntimeError when Redis
        counted otherwise."""
        self.db0.ping()
        self.db1.ping()
        before, sent = self.total_commands(), self.sent
        self.run([("EXISTS", "bench:none"), ("LLEN", "bench:none")])
        self.run([("MOVE", "bench:none", 0)], db=STAGING_DB, transaction=True)
        self.sent += 1
        self.db0.eval("redis.call('EXISTS', 'bench:none') return redis.call('TIME')", 0)
        counted = self.total_commands() - before
        expected = self.sent - sent + 2  # the script's two calls
        if counted != expected:
            raise RuntimeError(f"Redis counted {counted} commands where {expected} were sent")


def tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


class Stall:
    """Tells when a figure that should grow has not for :data:`STALL_SECONDS`."""

    def __init__(self) -> None:
        self.best: float | None = None
        self.since = time.monotonic()

    def stalled(self, value: float) -> bool:
        now = time.monotonic()
        if self.best is None or value > self.best:
            self.best, self.since = value, now
        return now - self.since > STALL_SECONDS


class Session:
    """``pool`` with ``context.workers`` workers on the Redis at ``context.port``."""

    def __init__(self, pool: Pool, context: PoolContext, meter: Meter) -> None:
        self.pool = pool
        self.context = context
        self.meter = meter
        self.waits = context.directory / "waits.txt"
        self.output = context.directory / f"{pool.name}-{context.workers}.log"
        self.group: ProcessGroup | None = None
        self._pending: list[Command] = []

    # --- life cycle ---------------------------------------------------------------------

    def env(self, db: int = 0) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "PYTHONPATH": str(REPO),
                peer_jobs.PORT_ENV: str(self.context.port),
                peer_jobs.DB_ENV: str(db),
                peer_jobs.WAITS_ENV: str(self.waits),
            }
        )
        if self.pool.venv is not None:
            env["VIRTUAL_ENV"] = str(self.pool.venv.directory)
            env["PATH"] = f"{self.pool.venv.directory / 'bin'}{os.pathsep}{env['PATH']}"
        return env

    def __enter__(self) -> Session:
        self.meter.db0.flushall()
        self.group = ProcessGroup(
            self.pool.commands(self.context), env=self.env(), cwd=REPO, output=self.output
        )
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Kills the pool's process group (idempotent)."""
        if self.group is not None:
            self.group.close()

    def _start(self) -> None:
        try:
            self.pool.ready(self.meter.db0, self.context)
        except RuntimeError as error:
            raise self._failure(str(error)) from None
        self.meter.db0.delete(peer_jobs.COUNTER_KEY)
        self.produce("send", "--job", "roundtrip", "--count", str(WARM_JOBS))
        self._wait_counter(WARM_JOBS, WARM_TIMEOUT, "the warm-up's jobs")
        self.meter.db0.delete(peer_jobs.COUNTER_KEY)
        self._pending = self.pool.pending(self.meter.db0, self.context)
        self._wait_idle()

    def _failure(self, what: str) -> PoolError:
        exited = self.group.exited() if self.group else []
        died = f" (exited: {exited})" if exited else ""
        return PoolError(
            f"{self.pool.name}: {what}{died}; its output ends with:\n{tail(self.output)}"
        )

    def _check_alive(self) -> None:
        if self.group is not None and self.group.exited():
            raise self._failure("the pool died")

    def _wait_counter(self, count: int, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while int(self.meter.command("GET", peer_jobs.COUNTER_KEY) or 0) < count:
            self._check_alive()
            if time.monotonic() > deadline:
                raise self._failure(f"{what} did not run within {timeout:g} s")
            time.sleep(0.01)

    def _unfinished(self) -> int:
        return sum(int(reply) for reply in self.meter.run(self._pending))

    def _wait_idle(self) -> None:
        """Waits until nothing is pending, then :data:`SETTLE_SECONDS` more."""
        stall = Stall()
        while left := self._unfinished():
            self._check_alive()
            if stall.stalled(-left):
                raise self._failure(f"{left} jobs still pending, none done in {STALL_SECONDS:g} s")
            time.sleep(0.01)
        time.sleep(SETTLE_SECONDS)

    def produce(self, *args: str, db: int = 0, timeout: float = 600.0) -> dict[str, Any]:
        """Runs :mod:`bench.peer_tasks.peer_client` for this pool; its JSON report."""
        command = [self.pool.python, "-m", "bench.peer_tasks.peer_client", self.pool.tasks]
        result = subprocess.run(
            [*command, *args],
            env=self.env(db),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )
        if result.returncode:
            raise PoolError(
                f"{self.pool.name}: the producer ({' '.join(args)}) failed:\n"
                + "\n".join(result.stderr.splitlines()[-LOG_TAIL:])
            )
        report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
        return report

    # --- measures -----------------------------------------------------------------------

    def idle(self, seconds: float) -> dict[str, Any]:
        """CPU of the pool's processes and Redis commands while nothing is queued."""
        assert self.group is not None
        cpu = self.group.cpu_seconds()
        before, sent = self.meter.total_commands(), self.meter.sent
        time.sleep(seconds)
        commands = self.meter.total_commands() - before - (self.meter.sent - sent)
        cpu = self.group.cpu_seconds() - cpu
        self._check_alive()
        return {
            "seconds": seconds,
            "cpu_percent": 100 * cpu / seconds,
            "redis_commands_per_second": commands / seconds,
        }

    def stage(self, job: str, count: int) -> float:
        """Stages ``count`` jobs on database 1 and moves all but the activation keys into
        database 0; the seconds the producer took."""
        self.meter.db1.flushdb()
        report = self.produce("stage", "--job", job, "--count", str(count), db=STAGING_DB)
        activation = {key.encode() for key in self.pool.activation}
        others = [key for key in self.meter.db1.scan_iter(count=1000) if key not in activation]
        for start in range(0, len(others), MOVE_BATCH):
            batch = others[start : start + MOVE_BATCH]
            self.meter.run([("MOVE", key, 0) for key in batch], db=STAGING_DB)
        missing = [key for key in self.pool.activation if not self.meter.db1.exists(key)]
        if missing:
            raise PoolError(f"{self.pool.name}: staging wrote no {', '.join(missing)}")
        return float(report["seconds"])

    def drain(self, job: str, count: int) -> dict[str, Any]:
        """Stages ``count`` jobs, hands them to the idle pool at once, and times them."""
        assert self.group is not None
        memory = self.used_memory()
        staging_seconds = self.stage(job, count)
        queued_bytes = self.used_memory() - memory
        self.meter.db0.delete(peer_jobs.COUNTER_KEY)
        time.sleep(SETTLE_SECONDS)
        moves: list[Command] = [("MOVE", key, 0) for key in self.pool.activation]
        cpu = self.group.cpu_seconds()
        before, sent = self.meter.total_commands(), self.meter.sent
        begin = time.perf_counter()
        moved = self.meter.run(moves, db=STAGING_DB, transaction=True)
        if not all(moved):
            raise PoolError(f"{self.pool.name}: the activation moved {moved}")
        stall = Stall()
        polls = 0
        while True:
            polls += 1
            if job == "roundtrip":
                progress = int(self.meter.command("GET", peer_jobs.COUNTER_KEY) or 0) - count
            else:
                progress = -self._unfinished()
            if progress >= 0:
                break
            if polls % 100 == 0:
                self._check_alive()
                if stall.stalled(progress):
                    raise self._failure(
                        f"{-progress} of {count} jobs left, none done in {STALL_SECONDS:g} s"
                    )
            time.sleep(POLL_SECONDS)
        elapsed = time.perf_counter() - begin
        harness = self.meter.sent - sent
        commands = self.meter.total_commands() - before - harness
        cpu = self.group.cpu_seconds() - cpu
        sizes = self.group.rss()
        self._wait_idle()
        return {
            "jobs": count,
            "seconds": elapsed,
            "per_second": count / elapsed,
            "redis_commands_per_job": commands / count,
            "harness_commands": harness,
            "cpu_ms_per_job": 1000 * cpu / count,
            "processes": len(sizes),
            "rss_mean_mb": statistics.fmean(sizes) / 2**20 if sizes else 0.0,
            "rss_sum_mb": sum(sizes) / 2**20,
            "staging_seconds": staging_seconds,
            "redis_memory_queued_mb": queued_bytes / 2**20,
            "redis_bytes_per_queued_job": queued_bytes / count,
        }

    def steady(self, job: str, rate: float, seconds: float) -> dict[str, Any]:
        """Enqueues at ``rate`` a second for ``seconds``; each job's enqueue → start."""
        self.waits.write_bytes(b"")
        report = self.produce(
            "steady", "--job", job, "--rate", str(rate), "--seconds", str(seconds)
        )
        sent = int(report["sent"])
        stall = Stall()
        while (received := self._lines()) < sent and not stall.stalled(received):
            self._check_alive()
            time.sleep(0.05)
        waits = [float(line.split()[0]) * 1000 for line in self.waits.read_text().splitlines()]
        if not waits:
            raise self._failure(f"none of {sent} steady jobs ran")
        self._wait_idle()
        return {
            "sent": sent,
            "received": received,
            "rate": rate,
            "producer_behind_ms": 1000 * float(report["behind"]),
            "p50_ms": percentile(waits, 0.50),
            "p99_ms": percentile(waits, 0.99),
            "max_ms": max(waits),
            "mean_ms": statistics.fmean(waits),
        }

    def _lines(self) -> int:
        try:
            return self.waits.read_bytes().count(b"\n")
        except OSError:
            return 0

    def used_memory(self) -> int:
        """Redis' ``used_memory`` (bytes)."""
        return int(self.meter.db0.info("memory")["used_memory"])
