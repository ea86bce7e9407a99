"""Runs the real ``tuitop --no-ui`` command as a subprocess, for the end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import redis
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tuitop.backends.redis import keys
from tuitop.backends.redis.queue import alive_in
from tuitop.message import encode
from tuitop.notification import TOPIC

REPO = Path(__file__).resolve().parent.parent


def write_config(
    directory: Path,
    *,
    port: int,
    workers: int | None = 2,
    password: str | None = None,
    smtp_port: int | None = None,
    extra: str = "",
    name: str = "local.inc",
) -> Path:
    """A Tuleap config file for a pool on 127.0.0.1:``port`` (SMTP relay when given)."""
    lines = ["<?php", "$redis_server = '127.0.0.1';", f"$redis_port = {port};"]
    if password is not None:
        lines.append(f"$redis_password = '{password}';")
    if workers is not None:
        lines.append(f"$sys_nb_backend_workers = {workers};")
    lines.append("$sys_logger_level = 'debug';")
    lines.append("$sys_noreply = '\"Tuleap\" <noreply@example.com>';")
    if smtp_port is not None:
        lines.append("$email_transport = 'smtp';")
        lines.append(f"$email_relayhost = '127.0.0.1:{smtp_port}';")
    lines.append(extra)
    path = directory / name
    path.write_text("\n".join(lines) + "\n")
    return path


def run_tuitop(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs ``tuitop ARGS`` to its end; no REDIS_* variable of this environment leaks in."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "tuitop", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=environ,
        timeout=60,
    )


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Polls ``predicate`` until it returns something truthy; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.05)


class Pool:
    """One ``tuitop --no-ui`` process with its log file and its combined output."""

    def __init__(
        self, directory: Path, config: Path, *args: str, env: dict[str, str] | None = None
    ):
        self.directory = directory
        self.log_file = directory / "worker_log"
        self.output_file = directory / "output.txt"
        self.command = [
            sys.executable,
            "-m",
            "tuitop",
            "--no-ui",
            "--config",
            str(config),
            "--log-file",
            str(self.log_file),
            *args,
        ]
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = str(REPO)
        self.env.update(env or {})
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Pool:
        with open(self.output_file, "ab") as output:
            self.process = subprocess.Popen(
                self.command, stdout=output, stderr=subprocess.STDOUT, cwd=REPO, env=self.env
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def output(self) -> str:
        return self.output_file.read_text() if self.output_file.exists() else ""

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 20.0) -> str:
        regex = re.compile(pattern)
        return str(
            wait_until(
                lambda: len(regex.findall(self.log())) >= count and self.log(),
                timeout,
                f"{count} log line(s) matching {pattern!r}",
            )
        )

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """Warm shutdown (SIGTERM); returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill_all(self) -> None:
        """Leaves nothing behind (for test teardown after a failure)."""
        if self.process is None:
            return
        try:
            family = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for child in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def worker_heartbeats(client: redis.Redis) -> dict[str, dict[str, str]]:
    """The live workers' heartbeat hashes, by worker id (alive as every view and pool
    tells: by its own word, or listed by its live pool)."""
    result = {}
    members = sorted(member.decode() for member in client.smembers(keys.WORKERS))
    for worker_id, alive in zip(members, alive_in(client, members), strict=True):
        fields = client.hgetall(keys.heartbeat(worker_id))
        if fields and alive:
            result[worker_id] = {k.decode(): v.decode() for k, v in fields.items()}
    return result


def processing_lists(client: redis.Redis) -> dict[str, int]:
    """Every non-empty processing list and its length."""
    return {
        key.decode(): int(client.llen(key))
        for key in client.scan_iter(match=keys.PROCESSING_PATTERN)
        if client.llen(key)
    }


def skewed_env(tmp_path: Path, offset: float) -> dict[str, str]:
    """The environment of a process whose wall clock runs ``offset`` s off this host's
    (another host's, as a test can make one: a ``sitecustomize``)."""
    skew = tmp_path / "skew"
    skew.mkdir(exist_ok=True)
    (skew / "sitecustomize.py").write_text(
        f"import time\n_time = time.time\ntime.time = lambda: _time() + {offset}\n"
    )
    return {"PYTHONPATH": f"{skew}:{REPO}"}


FAST_RETRY = ("--retry-delay", "0.05")


def nothing_pending(client: redis.Redis) -> bool:
    return (
        client.llen(keys.QUEUE) == 0
        and not processing_lists(client)
        and client.zcard(keys.DELAYED) == 0
    )


def notification(index: int, *, project: int = 101) -> bytes:
    return encode(
        TOPIC,
        {
            "project_id": project,
            "artifact_id": index,
            "changeset_id": 1000 + index,
            "mails": [
                {
                    "to": [f"user{index}@example.com"],
                    "subject": f"artifact #{index} updated",
                    "text": f"Artifact {index} changed.",
                }
            ],
        },
    )


def push_all(client: redis.Redis, raws: list[bytes]) -> None:
    pipe = client.pipeline(transaction=False)
    for raw in raws:
        pipe.lpush(keys.QUEUE, raw)
    pipe.execute()


def start_pool(pools: list[Pool], tmp_path: Path, config: Path, *args: str) -> Pool:
    pool = Pool(tmp_path, config, *args).start()
    pools.append(pool)
    return pool


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> list[Sample]:
    """Every sample ``/metrics`` serves, read by prometheus_client's parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def ctl(config: Path, *args: str) -> tuple[int, str]:
    done = run_tuitop("--config", str(config), "ctl", *args)
    return done.returncode, done.stdout + done.stderr


HANDLERS = ("--handlers", "tests.handlers_for_tests")
"""The test handlers (tests/handlers_for_tests.py)."""


def beat(client: redis.Redis, pool: str) -> dict[str, str]:
    """The fields of pool ``pool``'s heartbeat hash."""
    fields = client.hgetall(keys.pool(pool))
    return {k.decode(): v.decode() for k, v in fields.items()}


def running(client: redis.Redis, pool: str, count: int) -> None:
    wait_until(
        lambda: beat(client, pool).get("running") == str(count),
        what=f"pool {pool} running {count} worker(s)",
    )


def start_named_pool(
    pools: list[Pool], tmp_path: Path, config: Path, name: str, *args: str
) -> Pool:
    directory = tmp_path / name
    directory.mkdir()
    pool = Pool(directory, config, "--pool-name", name, *HANDLERS, *args).start()
    pools.append(pool)
    return pool
