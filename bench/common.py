"""Helpers every benchmark shares: percentiles, a private pool's config and process, its
workers' readiness, Redis command counts.

What a caller may rely on: :func:`start_pool` runs the real ``python -m tuitop --no-ui``
(this interpreter, the repository on ``PYTHONPATH``) with its output appended to
``output.txt`` in ``directory``; :func:`stop` ends it with SIGTERM and waits; nothing here
starts a server or touches one on a default port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from tuitop.backends.redis import keys

REPO = Path(__file__).resolve().parent.parent


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def config_path(directory: Path) -> Path:
    """``directory/conf/local.inc``, its directory made: a directory of its own, as
    ``/etc/tuleap/conf``. The pool watches the directory of its config, so a file that a
    bench writes beside it (a log, the jobs' waits) would wake the watcher at every write
    and take CPU from the workers being measured."""
    path = directory / "conf" / "local.inc"
    path.parent.mkdir(exist_ok=True)
    return path


def write_config(directory: Path, port: int, workers: int) -> Path:
    """:func:`config_path` for a pool of ``workers`` on the Redis at 127.0.0.1:``port``
    (tuitop's default lanes, warnings only)."""
    path = config_path(directory)
    path.write_text(
        "<?php\n$redis_server = '127.0.0.1';\n"
        f"$redis_port = {port};\n$sys_nb_backend_workers = {workers};\n"
        "$sys_logger_level = 'warning';\n$sys_noreply = 'noreply@example.com';\n"
    )
    return path


def pool_command(directory: Path, config: Path, *args: str) -> list[str]:
    """``python -m tuitop --no-ui --config config`` logging to ``directory/worker_log``,
    with ``args``: to run with the repository on ``PYTHONPATH``."""
    command = [sys.executable, "-m", "tuitop", "--no-ui", "--config", str(config)]
    return [*command, "--log-file", str(directory / "worker_log"), *args]


def start_pool(directory: Path, config: Path, *args: str) -> subprocess.Popen[bytes]:
    """Starts :func:`pool_command` from the repository, its output in ``output.txt``."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    output = open(directory / "output.txt", "ab")  # noqa: SIM115 - kept for the child
    return subprocess.Popen(
        pool_command(directory, config, *args),
        stdout=output,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
    )


def wait_for_workers(client: redis.Redis, count: int, timeout: float = 30) -> None:
    """Returns once ``count`` workers' heartbeats say idle; RuntimeError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        beats = [
            client.hget(keys.heartbeat(m.decode()), "state") for m in client.smembers(keys.WORKERS)
        ]
        if sum(1 for state in beats if state == b"idle") >= count:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{count} idle workers did not show up in {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then waits for the process (60 s at most)."""
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


def command_count(client: redis.Redis) -> dict[str, int]:
    """Calls so far of each command (INFO commandstats), by lower-case name."""
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
