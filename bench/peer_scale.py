"""``python -m bench.peers --scale``: tuitop and the bare loop with 1, 2, 4 and 8 workers
(drain of ``--drain`` noop jobs, wait p99 at ``--rate``), then each draining ``--big``
(1,000,000) queued noop jobs — staged with pipelined LPUSHes of 1,000 values — with
``--workers`` workers: its rate and the Redis memory the queued jobs took.

Rounds alternate the two pools (tuitop, bare, tuitop, bare …) as the main benchmark does;
the figures are min / median / max over ``--runs``.
"""

from __future__ import annotations

import argparse
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.peer_pools import POOLS, PoolContext
from bench.peer_report import number, render, spread
from bench.peer_session import Meter, Session

Record = dict[str, Any]
PAIR = ("tuitop", "bare")


def _measure(
    pool: str, workers: int, port: int, directory: Path, meter: Meter, jobs: int, args: Any
) -> Record:
    """One session: a drain of ``jobs`` noop jobs, then (unless ``jobs`` is the big drain)
    the steady wait."""
    record: Record = {"pool": pool, "workers": workers}
    try:
        with Session(POOLS[pool], PoolContext(port, workers, directory), meter) as session:
            if jobs > 0:
                record["drain"] = session.drain("noop", jobs)
            if jobs != args.big and args.seconds > 0:
                record["wait"] = session.steady("noop", args.rate, args.seconds)
    except Exception as error:  # an error row, not the end of the run
        record["error"] = f"{type(error).__name__}: {error or traceback.format_exc()}"
    return record


def _line(record: Record) -> str:
    if "error" in record:
        return "error: " + str(record["error"]).splitlines()[0]
    parts = []
    if "drain" in record:
        parts.append(f"drain {record['drain']['per_second']:,.0f}/s")
    if "wait" in record:
        parts.append(f"p99 {record['wait']['p99_ms']:.2f} ms")
    return ", ".join(parts)


def run_scale(
    meter: Meter,
    port: int,
    directory: Path,
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The scale rounds; ``{"scale": [records], "big": [records]}``."""
    scale: list[Record] = []
    big: list[Record] = []
    for run in range(1, args.runs + 1):
        for workers in args.scale_workers:
            for pool in PAIR:
                record = {"run": run} | _measure(
                    pool, workers, port, directory, meter, args.drain, args
                )
                log(f"run {run}/{args.runs} {pool:<7} {workers} workers: {_line(record)}")
                scale.append(record)
        if args.big > 0:
            for pool in PAIR:
                record = {"run": run} | _measure(
                    pool, args.workers, port, directory, meter, args.big, args
                )
                log(f"run {run}/{args.runs} {pool:<7} {args.big:,} queued: {_line(record)}")
                big.append(record)
    return {"scale": scale, "big": big}


def _cell(records: Sequence[Record], section: str, key: str, digits: int) -> str:
    found = spread([float(r[section][key]) for r in records if section in r])
    if found is None:
        errors = [r["error"] for r in records if "error" in r]
        return "error" if errors else "-"
    if found["n"] == 1:
        return number(found["median"], digits)
    low, middle, high = (number(found[s], digits) for s in ("min", "median", "max"))
    return f"{middle} [{low}-{high}]"


def scale_tables(document: dict[str, Any]) -> str:
    """The scale table (one row per pool and worker count) and the big drain's."""
    scale, big = document.get("scale", []), document.get("big", [])
    counts = sorted({int(r["workers"]) for r in scale})
    rows = []
    for workers in counts:
        for pool in PAIR:
            mine = [r for r in scale if r["pool"] == pool and r["workers"] == workers]
            rows.append(
                [
                    pool,
                    str(workers),
                    _cell(mine, "drain", "per_second", 0),
                    _cell(mine, "drain", "redis_commands_per_job", 3),
                    _cell(mine, "drain", "cpu_ms_per_job", 3),
                    _cell(mine, "wait", "p50_ms", 2),
                    _cell(mine, "wait", "p99_ms", 2),
                ]
            )
    header = ["pool", "workers", "drain/s", "cmds/job", "CPU ms/job", "p50 ms", "p99 ms"]
    lines = ["median [min-max] of the rounds, noop jobs", render(header, rows)]
    if big:
        rows = []
        for pool in PAIR:
            mine = [r for r in big if r["pool"] == pool]
            jobs = next((r["drain"]["jobs"] for r in mine if "drain" in r), 0)
            rows.append(
                [
                    pool,
                    f"{jobs:,}",
                    _cell(mine, "drain", "per_second", 0),
                    _cell(mine, "drain", "seconds", 1),
                    _cell(mine, "drain", "redis_memory_queued_mb", 1),
                    _cell(mine, "drain", "redis_bytes_per_queued_job", 0),
                ]
            )
        header = ["pool", "queued", "drain/s", "seconds", "Redis MB queued", "bytes/job"]
        lines += ["", "the big drain", render(header, rows)]
    errors = [f"{r['pool']} {r['workers']}: {r['error']}" for r in [*scale, *big] if "error" in r]
    if errors:
        lines += ["", "errors:", *errors]
    return "\n".join(lines)
