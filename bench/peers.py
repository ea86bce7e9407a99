"""Every pool on one harness: tuitop, the bare loop, Huey, Celery, Dramatiq, arq and RQ.

``python -m bench.peers`` starts ONE private Redis (the newest ``redis-server`` on ``PATH``)
and, round after round, each pool in turn (A B C … A B C …), each with 2 workers, in its
own virtualenv (made on first use under ``~/.cache/tuitop-bench/venvs``), on two jobs
that do the same work in every pool (``noop``; ``roundtrip``: one INCR on a connection the
job's process keeps). For each pool and job:

* drain: 10,000 jobs staged by the pool's own client, handed over at once to the idle
  pool; jobs a second, Redis commands a job (the harness' own polls subtracted), CPU of
  all the pool's processes a job, RSS of each after the drain;
* wait: enqueue → start, p50 / p99, at a steady 200 jobs a second for 10 s;
* idle (once per pool and round): CPU % of its processes, Redis commands a second.

Prints min / median / max over the rounds and the ratios to the bare loop (pair by pair
within a round), and writes ``bench/results/peers.json`` (machine, versions, settings,
every record). ``--scale``: tuitop and the bare loop only, with 1, 2, 4 and 8 workers, and
a drain of 1,000,000 queued jobs (``bench/results/peers-scale.json``). A pool that fails
gets an error row; every pool's process group is killed at the end of its turn whatever
happens. See ``--help`` for the options that run a subset quickly.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

from bench.common import REPO
from bench.peer_machine import machine, newest_redis_server
from bench.peer_pools import DEFAULT_POOLS, POOLS, Pool, PoolContext
from bench.peer_report import figures_table, ranges_table, ratios, ratios_table, summarize
from bench.peer_scale import run_scale, scale_tables
from bench.peer_session import NOTES, Meter, Session
from bench.peer_tasks.peer_jobs import JOBS
from bench.peer_venvs import cache_dir, ensure
from tuitop.embedded.redisserver import EmbeddedRedis, find_redis_server

RESULTS = REPO / "bench" / "results"


def names(text: str, known: tuple[str, ...] | list[str], what: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none given)'}: choose from {', '.join(known)}"
        )
    return chosen


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description=(__doc__ or "").splitlines()[0],
    )
    parser.add_argument(
        "--pools",
        type=lambda text: names(text, list(POOLS), "pool"),
        default=list(DEFAULT_POOLS),
        help=f"comma-separated, from {','.join(POOLS)} (default: {','.join(DEFAULT_POOLS)})",
    )
    parser.add_argument(
        "--jobs",
        type=lambda text: names(text, JOBS, "job"),
        default=list(JOBS),
        help="comma-separated: noop,roundtrip (default: both)",
    )
    parser.add_argument("--runs", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--drain", type=int, default=10_000, help="jobs a drain (0: none)")
    parser.add_argument("--rate", type=float, default=200.0, help="steady jobs a second")
    parser.add_argument("--seconds", type=float, default=10.0, help="steady phase (0: none)")
    parser.add_argument("--idle", type=float, default=10.0, help="idle phase (0: none)")
    parser.add_argument("--workers", type=int, default=2, help="workers a pool (default 2)")
    parser.add_argument(
        "--scale", action="store_true", help="tuitop and bare with 1, 2, 4, 8 workers"
    )
    parser.add_argument(
        "--scale-workers",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 2, 4, 8],
        help="--scale: the worker counts (default 1,2,4,8)",
    )
    parser.add_argument(
        "--big", type=int, default=1_000_000, help="--scale: jobs of the big drain (0: none)"
    )
    parser.add_argument("--redis-server", help="the redis-server binary (default: newest)")
    parser.add_argument("--output", type=Path, help="the results file")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.workers < 1 or args.rate <= 0:
        parser.error("--runs, --workers and --rate must be positive")
    return args


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def prepare(pools: list[Pool]) -> dict[str, str]:
    """Builds the missing virtualenvs; the pools that have none, with the reason."""
    broken = {}
    for pool in pools:
        if pool.venv is None:
            continue
        target = pool.venv.directory
        build_log = cache_dir() / "logs" / f"{target.name}.log"
        build_log.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            log(f"building {target} (pip's output: {build_log})")
        try:
            ensure(pool.venv, build_log)
        except RuntimeError as error:
            broken[pool.name] = str(error)
    return broken


def describe(record: dict[str, Any]) -> str:
    if "error" in record and "drain" not in record:
        return "error: " + str(record["error"]).splitlines()[0]
    parts = []
    if "drain" in record:
        drain = record["drain"]
        rate, commands = drain["per_second"], drain["redis_commands_per_job"]
        parts.append(f"drain {rate:,.0f}/s {commands:.2f} cmd/job")
    if "wait" in record:
        parts.append(f"p99 {record['wait']['p99_ms']:.2f} ms")
    if "error" in record:
        parts.append("then error: " + str(record["error"]).splitlines()[0])
    return ", ".join(parts)


def run_session(
    pool: Pool, run: int, context: PoolContext, meter: Meter, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """One pool's turn in a round: a record per job, an error in those it could not finish."""
    records = {job: {"run": run, "pool": pool.name, "job": job} for job in args.jobs}
    current = args.jobs[0]
    try:
        with Session(pool, context, meter) as session:
            idle = session.idle(args.idle) if args.idle > 0 else None
            for current in args.jobs:
                record = records[current]
                if idle is not None:
                    record["idle"] = idle
                if args.drain > 0:
                    record["drain"] = session.drain(current, args.drain)
                if args.seconds > 0:
                    record["wait"] = session.steady(current, args.rate, args.seconds)
    except Exception as error:  # one pool's failure is its rows' error, not the run's end
        message = str(error) if str(error) else traceback.format_exc()
        failed = False
        for job in args.jobs:
            failed = failed or job == current
            if failed:
                records[job]["error"] = f"{type(error).__name__}: {message}"
    return list(records.values())


def run_rounds(
    pools: list[Pool],
    broken: dict[str, str],
    meter: Meter,
    port: int,
    directory: Path,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    records = []
    for run in range(1, args.runs + 1):
        for pool in pools:
            if pool.name in broken:
                found = [
                    {"run": run, "pool": pool.name, "job": job, "error": broken[pool.name]}
                    for job in args.jobs
                ]
            else:
                context = PoolContext(port, args.workers, directory)
                found = run_session(pool, run, context, meter, args)
            for record in found:
                log(f"run {run}/{args.runs} {pool.name:<9} {record['job']:<9} {describe(record)}")
            records.extend(found)
    return records


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds every session: its pool's group is killed


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    binary = args.redis_server or newest_redis_server() or find_redis_server()
    pools = [POOLS[name] for name in (("tuitop", "bare") if args.scale else args.pools)]
    broken = prepare(pools)
    with (
        tempfile.TemporaryDirectory(prefix="tuitop-peers-") as temp,
        EmbeddedRedis(binary=binary) as server,
    ):
        meter = Meter(server.port)
        meter.calibrate()
        redis_version = str(server.client().info("server")["redis_version"])
        log(f"Redis {redis_version} ({binary}) on 127.0.0.1:{server.port}")
        ready = [pool for pool in pools if pool.name not in broken]
        document: dict[str, Any] = {"machine": machine(binary, redis_version, ready)}
        document["settings"] = {pool.name: pool.settings(args.workers) for pool in pools}
        document["parameters"] = {
            key: value for key, value in vars(args).items() if key not in ("output",)
        }
        document["notes"] = NOTES
        if args.scale:
            document |= run_scale(meter, server.port, Path(temp), args, log)
            text = scale_tables(document)
            output = args.output or RESULTS / "peers-scale.json"
        else:
            records = run_rounds(pools, broken, meter, server.port, Path(temp), args)
            names_run = [pool.name for pool in pools]
            summary = summarize(records, names_run, args.jobs)
            against = ratios(records, names_run, args.jobs) if "bare" in names_run else []
            document |= {
                "records": records,
                "summary": summary,
                "ratios": against,
            }
            text = tables(document, args)
            output = args.output or RESULTS / "peers.json"
    print(text)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"wrote {output}")
    return 0


def tables(document: dict[str, Any], args: argparse.Namespace) -> str:
    info = document["machine"]
    versions = ", ".join(
        f"{name} {found.get(POOLS[name].distribution, '?')}"
        for name, found in info["pools"].items()
        if POOLS[name].venv is not None
    )
    lines = [
        f"peers — {info['cores']} cores ({info['cpu']}), Python {info['python']}, "
        f"Redis {info['redis']}" + (f"; {versions}" if versions else ""),
        f"{args.workers} workers a pool; drain of {args.drain:,} jobs, wait at "
        f"{args.rate:g}/s for {args.seconds:g} s, idle {args.idle:g} s; {args.runs} round(s)",
        "",
        "median of the rounds" if args.runs > 1 else "one round",
        figures_table(document["summary"], "median"),
    ]
    if args.runs > 1:
        lines += ["", "min-max of the rounds", ranges_table(document["summary"])]
    if document["ratios"]:
        lines += [
            "",
            "against the bare loop, pair by pair within a round: min / median / max",
            ratios_table(document["ratios"]),
        ]
    summary = document["summary"]
    errors = [f"{row['pool']} {row['job']}: {e}" for row in summary for e in row["errors"]]
    if errors:
        lines += ["", "errors:", *errors]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
