"""What a peers benchmark ran on: the machine, the Redis server, every pool's versions.

:func:`newest_redis_server` picks, among the ``redis-server`` binaries on ``PATH``, the one
that says the highest version (a Python package may put an older one first on ``PATH``).
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import REPO
from bench.peer_pools import Pool
from bench.peer_venvs import versions

BINARY = "redis-server"


def redis_server_version(binary: str) -> tuple[int, ...]:
    """The version ``binary --version`` says, as numbers; () when it says none."""
    try:
        output = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    found = re.search(r"v=(\d+(?:\.\d+)*)", output)
    return tuple(int(part) for part in found.group(1).split(".")) if found else ()


def newest_redis_server() -> str | None:
    """The ``redis-server`` on ``PATH`` with the highest version, None when there is none."""
    candidates = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which(BINARY, path=directory or ".")
        if found and found not in candidates:
            candidates.append(found)
    versioned = [(redis_server_version(path), path) for path in candidates]
    versioned = [(version, path) for version, path in versioned if version]
    if not versioned:
        return None
    return max(versioned, key=lambda pair: pair[0])[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def pool_versions(pool: Pool) -> dict[str, str]:
    """The versions of the pool's distribution, redis-py and hiredis, as it runs them."""
    return versions(pool.python, [pool.distribution, "redis", "hiredis"])


def machine(redis_binary: str, redis_version: str, pools: Sequence[Pool]) -> dict[str, Any]:
    """The machine's description for the results file (``pools``: those prepared)."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "redis": redis_version,
        "redis_server": redis_binary,
        "tuitop_commit": git_commit(),
        "pools": {pool.name: pool_versions(pool) for pool in pools},
    }
