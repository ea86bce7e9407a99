"""The pool the UI runs as a child: its control pipe counts every key press, and the UI's
death (the pipe's end of file) is a warm stop, never a cold one."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis

from tests.handlers_for_tests import RUNS_KEY
from tests.pool import REPO, wait_until, write_config
from tuitop.backends.redis import keys
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.message import encode
from tuitop.poolprocess import PoolProcess


@pytest.fixture
def pool(
    tmp_path: Path, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> PoolProcess:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    process = PoolProcess(
        [
            *("--config", str(config), "--log-file", str(tmp_path / "worker_log")),
            *("--handlers", "tests.handlers_for_tests"),
        ]
    ).start()
    yield process
    if process.returncode is None:
        process.stop()
        process.stop()
    process.wait(30)


def wanted(client: redis.Redis) -> int:
    return int(client.hget(keys.pool(socket.gethostname()), "wanted") or -1)


def test_every_key_press_counts_even_sent_together(
    pool: PoolProcess, redis_client: redis.Redis
) -> None:
    wait_until(lambda: wanted(redis_client) == 1, what="the pool's first heartbeat")
    for _ in range(4):  # as fast as a script can: signals would merge, bytes do not
        assert pool.more_workers()
    wait_until(lambda: wanted(redis_client) == 5, what="wanted 5")
    assert pool.fewer_workers()
    wait_until(lambda: wanted(redis_client) == 4, what="wanted 4")
    pool.stop()
    assert pool.wait(30) == 0
    assert not pool.more_workers()  # said, not raised, once the pool is gone


def test_the_ui_dying_after_q_stops_the_pool_warm_not_cold(
    pool: PoolProcess, redis_client: redis.Redis
) -> None:
    wait_until(lambda: wanted(redis_client) == 1, what="the pool's first heartbeat")
    redis_client.lpush(keys.QUEUE, encode("test.slow", {"id": "s", "seconds": 2}))
    wait_until(lambda: redis_client.lrange(RUNS_KEY, 0, -1) == [b"start:s"], what="the job")
    pool.stop()  # q: warm
    # The terminal closes: the UI dies, its end of the control pipe with it.
    assert pool._process is not None and pool._process.stdin is not None
    pool._process.stdin.close()
    assert pool.wait(30) == 0
    assert redis_client.lrange(RUNS_KEY, 0, -1) == [b"start:s", b"end:s"]  # not cut


def test_the_ui_dying_alone_stops_the_pool_warm(
    pool: PoolProcess, redis_client: redis.Redis, tmp_path: Path
) -> None:
    wait_until(lambda: wanted(redis_client) == 1, what="the pool's first heartbeat")
    redis_client.lpush(keys.QUEUE, encode("test.slow", {"id": "t", "seconds": 1}))
    wait_until(lambda: redis_client.lrange(RUNS_KEY, 0, -1) == [b"start:t"], what="the job")
    assert pool._process is not None and pool._process.stdin is not None
    pool._process.stdin.close()
    assert pool.wait(30) == 0
    assert redis_client.lrange(RUNS_KEY, 0, -1) == [b"start:t", b"end:t"]
    assert (
        "The UI that ran this pool is gone: stopping warm" in (tmp_path / "worker_log").read_text()
    )


def test_workers_do_not_inherit_the_control_pipe(
    pool: PoolProcess, redis_client: redis.Redis
) -> None:
    """The pipe is the supervisor's alone: a worker (and what its handler runs) reads
    /dev/null, and holds nothing that would keep the pipe open."""
    redis_client.lpush(keys.QUEUE, encode("test.stdin", {}))
    wait_until(lambda: redis_client.llen(RUNS_KEY) == 1, what="the job")
    assert redis_client.lindex(RUNS_KEY, 0) == b"/dev/null"


def test_control_stdin_is_refused_from_a_terminal_or_with_the_ui() -> None:
    from tests.pool import run_tuitop

    done = run_tuitop("--control-stdin", "--config", "/nonexistent.inc")
    assert done.returncode == 2
    assert "--control-stdin is the UI's pipe to its pool" in done.stderr
