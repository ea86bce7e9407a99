"""`tuitop demo` with its UI in a real terminal (tmux): what a user sees and what the keys do.

The real command runs in a detached tmux session of a private tmux server (its own socket,
no user config), 132x42, or 80x24 (a plain SSH session). The test reads the screen with
``capture-pane`` and types with ``send-keys``: every panel appears, both workers show up,
notifications flow; ``+`` and ``-`` add and remove a worker for the session; ``d`` opens
the dead letters, ``?`` the help, Escape goes back; ``q`` ends it all with exit code 0 and
the demo's summary line. At 80x24 the header and the worker table's key columns are on
screen; ``tuitop top`` there scales and pauses a pool of another process, and refuses to
with ``--read-only``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis

from tests.handlers_for_tests import RUNS_KEY
from tests.pool import REPO, Pool, wait_until, write_config
from tuitop.backends.redis import keys
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.message import encode

SESSION = "demo"
TIMEOUT = 30.0


class Terminal:
    """A private tmux server (``tmux -L NAME``) with one session running a command."""

    def __init__(self) -> None:
        self.socket = f"tuitop-test-{uuid.uuid4().hex[:12]}"

    def tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = subprocess.run(
            ["tmux", "-f", "/dev/null", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=10,
        )
        assert result.returncode == 0, f"tmux {' '.join(args)}: {result.stderr}"
        return result.stdout

    def start(
        self, command: list[str], env: dict[str, str], size: tuple[int, int] = (132, 42)
    ) -> None:
        width, height = (str(n) for n in size)
        self.tmux(
            *("new-session", "-d", "-s", SESSION, "-x", width, "-y", height, "-c", str(REPO)),
            *command,
            env=env,
        )

    def screen(self, *options: str) -> str:
        """What the pane shows now (``options`` for more, e.g. scrollback)."""
        return self.tmux("capture-pane", "-p", "-t", SESSION, *options)

    def press(self, key: str) -> None:
        """One key: a character, or a tmux key name such as ``Escape``."""
        self.tmux("send-keys", "-t", SESSION, "--", key)

    def wait_until(self, condition: Callable[[str], bool], what: str) -> str:
        """Polls the screen until ``condition(screen)``; fails with the last screen."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            screen = self.screen()
            if condition(screen):
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; the screen was:\n{screen}")
            time.sleep(0.1)

    def wait_for(self, *texts: str, gone: tuple[str, ...] = ()) -> str:
        """Polls the screen until it shows every one of ``texts`` and none of ``gone``."""
        return self.wait_until(
            lambda screen: (
                all(text in screen for text in texts) and not any(text in screen for text in gone)
            ),
            what=f"{list(texts)}" + (f" without {list(gone)}" if gone else ""),
        )

    def processes(self) -> list[psutil.Process]:
        """The pane's processes and all their descendants (empty once the server is gone)."""
        with contextlib.suppress(AssertionError, psutil.Error, ValueError):
            pane = psutil.Process(
                int(self.tmux("display-message", "-p", "-t", SESSION, "#{pane_pid}"))
            )
            return [pane, *pane.children(recursive=True)]
        return []

    def close(self) -> None:
        """Kills the server, then whatever the pane left running (Redis, workers...), and
        removes the server's socket file (tmux leaves it behind)."""
        family = self.processes()
        socket = ""
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            socket = self.tmux("display-message", "-p", "#{socket_path}").strip()
            self.tmux("kill-server")
        if socket.endswith(self.socket):
            Path(socket).unlink(missing_ok=True)
        _gone, alive = psutil.wait_procs(family, timeout=10)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not on the PATH")
    terminal = Terminal()
    try:
        yield terminal
    finally:
        terminal.close()


def flowing(screen: str) -> bool:
    """The queue panel shows notifications done at a non-zero rate."""
    done = re.search(r"done (\d+(?:\.\d+)?)/s", screen)
    return done is not None and float(done.group(1)) > 0


@pytest.mark.parametrize("queue", ["redis", "db"])
def test_demo_ui_in_a_terminal(terminal: Terminal, tmp_path: Path, queue: str) -> None:
    """The demo on either queue: a private Redis, or Tuleap's database on a private
    MariaDB."""
    exit_file = tmp_path / "exit"
    script = (
        f"PYTHONPATH={shlex.quote(str(REPO))} "
        f"{shlex.quote(sys.executable)} -m tuitop demo --rate 40 --queue {queue}; "
        f"echo $? > {shlex.quote(str(tmp_path / 'exit.tmp'))} && "
        f"mv {shlex.quote(str(tmp_path / 'exit.tmp'))} {shlex.quote(str(exit_file))}; "
        "sleep 30"
    )
    terminal.start(["sh", "-c", f"cd {shlex.quote(str(REPO))} && {script}"], clean_env())

    # Every panel, the header and the footer.
    terminal.wait_for(
        *("Queue", "Notification latency", "Config", "Workers 2 running / 2 wanted", "Log"),
        "redis 127.0.0.1:" if queue == "redis" else "db mysql://tuleapadm@127.0.0.1:",
        *("✔", "dead letters", "quit"),
    )
    # Both workers, and notifications flowing (the rate is the last complete 10 s bucket).
    terminal.wait_for("demo/0", "demo/1")
    terminal.wait_until(flowing, "notifications done at a non-zero rate")

    # + and -: one more worker for this session, then back to what the files say.
    terminal.press("+")
    terminal.wait_for("Workers 3 running / 3 wanted", "files say 2", "demo/2")
    terminal.press("-")
    terminal.wait_for("Workers 2 running / 2 wanted", gone=("files say 2",))

    # d: the dead letters, none; Escape goes back. Waiting for the screen to change after
    # Escape also keeps the next key from following it too closely (ESC + key is Alt+key).
    terminal.press("d")
    terminal.wait_for("Dead letters: 0")
    terminal.press("Escape")
    terminal.wait_for("Notification latency", "q quit", gone=("Dead letters: 0",))

    # ?: the help, over the main screen; Escape closes it.
    terminal.press("?")
    terminal.wait_for("Main screen")
    terminal.press("Escape")
    terminal.wait_for("Notification latency", "q quit", gone=("Main screen",))

    # q: the UI, the pool and the demo end; the demo says what it did.
    terminal.press("q")
    deadline = time.monotonic() + TIMEOUT
    while not exit_file.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"the demo did not end after q; the screen was:\n{terminal.screen()}")
        time.sleep(0.1)
    # -J joins the lines the terminal wrapped: the summary line is about 130 characters.
    final = terminal.screen("-J", "-S", "-100")
    assert exit_file.read_text().strip() == "0", final
    summary = re.search(
        r"(\d+) notifications and (\d+) of Tuleap's jobs queued, (\d+) done, (\d+) still "
        r"queued, (\d+) dead letters; (\d+) mails received by the local SMTP server",
        final,
    )
    assert summary is not None, final
    notifications, jobs, done, left, dead, mails = (int(group) for group in summary.groups())
    assert mails > 0 and jobs > 0 and dead == 0, final
    assert done + left == notifications + jobs, final
    assert "Traceback" not in final, final


def clean_env() -> dict[str, str]:
    """No REDIS_* of this environment leaks in, no outer tmux is in sight, and no outer
    terminal's size (COLUMNS, LINES: pytest-xdist's workers have them, and Textual takes
    them over the terminal's own)."""
    dropped = ("REDIS_", "TMUX")
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(dropped) and k not in ("COLUMNS", "LINES")
    } | {"PYTHONPATH": str(REPO)}


KEY_COLUMNS = re.compile(r"\bid +state +done +failed +cpu +rss\b")
"""The worker table's header at 80 columns: what it keeps when it drops columns."""


def test_demo_at_80x24(terminal: Terminal, tmp_path: Path) -> None:
    """The demo in the smallest terminal it is made for: the header on the first line,
    the worker table's key columns and both workers, the footer's keys."""
    exit_file = tmp_path / "exit"
    script = (
        f"{shlex.quote(sys.executable)} -m tuitop demo --rate 40; "
        f"echo $? > {shlex.quote(str(exit_file))}; sleep 30"
    )
    terminal.start(["sh", "-c", f"cd {shlex.quote(str(REPO))} && {script}"], clean_env(), (80, 24))
    screen = terminal.wait_for("redis 127.0.0.1:", "✔", "demo/0", "demo/1", "q quit")
    lines = screen.splitlines()
    assert len(lines) == 24 and all(len(line) <= 80 for line in lines)
    assert lines[0].strip().startswith("tuitop · redis 127.0.0.1:"), screen
    terminal.wait_until(lambda s: KEY_COLUMNS.search(s) is not None, "the key columns")
    assert "Queue" in screen and "Notification latency" in screen and "Workers" in screen
    terminal.wait_until(flowing, "notifications done at a non-zero rate")
    # The header stays where it is as the picture changes (nothing scrolls it away).
    terminal.press("+")
    screen = terminal.wait_for("Workers 3 running / 3 wanted")
    assert screen.splitlines()[0].strip().startswith("tuitop · redis 127.0.0.1:"), screen
    assert KEY_COLUMNS.search(screen), screen
    terminal.press("q")
    deadline = time.monotonic() + TIMEOUT
    while not exit_file.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"the demo did not end after q; the screen was:\n{terminal.screen()}")
        time.sleep(0.1)
    assert exit_file.read_text().strip() == "0", terminal.screen()


def test_top_at_80x24_scales_and_pauses_a_pool_of_another_process(
    terminal: Terminal,
    tmp_path: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
) -> None:
    """The real ``tuitop top``: + and p reach the pool named alpha through Redis; with
    --read-only, the same keys are refused."""
    config = write_config(tmp_path, port=redis_server.port, workers=2)
    pool = Pool(tmp_path, config, "--pool-name", "alpha").start()
    pools.append(pool)

    def beat(name: str) -> str:
        return (redis_client.hget(keys.pool("alpha"), name) or b"").decode()

    wait_until(lambda: beat("running") == "2", what="alpha running 2 workers")
    top = (
        f"{shlex.quote(sys.executable)} -m tuitop --config {shlex.quote(str(config))} top "
        "--log-file ''"
    )
    terminal.start(["sh", "-c", f"{top} --read-only; {top}; sleep 30"], clean_env(), (80, 24))
    terminal.wait_for("alpha/0", "alpha/1", "read-only")
    terminal.press("+")
    terminal.wait_for("read-only view")
    terminal.press("p")
    time.sleep(1.5)  # a pool reads its mailbox every second: nothing came
    assert (beat("wanted"), beat("paused")) == ("2", "0")

    terminal.press("q")  # the next one, not read-only
    terminal.wait_for("alpha/0", gone=("read-only",))
    terminal.press("+")
    wait_until(lambda: beat("running") == "3", what="alpha scaled to 3 by top")
    terminal.wait_for("Workers 3 running / 3 wanted", "alpha: scale +1")
    terminal.press("p")
    wait_until(lambda: beat("paused") == "1", what="alpha paused by top")
    terminal.wait_for("paused: alpha")  # the view knows: p now resumes
    terminal.press("p")
    wait_until(lambda: beat("paused") == "0", what="alpha resumed by top")
    terminal.press("q")
    assert "tuitop top" in pool.log()  # who asked: logged by the pool


def test_tuitop_with_its_ui_and_the_terminal_closed_mid_job(
    terminal: Terminal, tmp_path: Path, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """The real ``tuitop --config FILE`` (the pool behind its UI): a refused save is shown,
    and closing the terminal while a job runs stops the pool warm: the job finishes."""
    config = write_config(tmp_path, port=redis_server.port, workers=2)
    command = (
        f"{shlex.quote(sys.executable)} -m tuitop --config {shlex.quote(str(config))} "
        f"--pool-name tm --log-file {shlex.quote(str(tmp_path / 'worker_log'))} "
        "--handlers tests.handlers_for_tests; sleep 30"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "TMUX"))} | {
        "PYTHONPATH": str(REPO)
    }
    terminal.start(["sh", "-c", f"cd {shlex.quote(str(REPO))} && {command}"], env)
    terminal.wait_for("Workers 2 running / 2 wanted", "tm/0", "tm/1", "pool pid")

    # A save with a syntax error: said in the config panel, the pool runs on.
    config.write_text("<?php\n$sys_nb_backend_workers = 3\n")
    terminal.wait_for("the last save was refused", "Workers 2 running / 2 wanted")

    # A job runs; the terminal closes (the tmux server is killed, the UI with it).
    redis_client.lpush(keys.QUEUE, encode("test.slow", {"id": "j", "seconds": 2}))
    wait_until(lambda: redis_client.lrange(RUNS_KEY, 0, -1) == [b"start:j"], what="the job")
    pool_pid = int(redis_client.hget(keys.pool("tm"), "pid") or 0)
    assert pool_pid and psutil.pid_exists(pool_pid)
    terminal.tmux("kill-server")
    wait_until(lambda: not psutil.pid_exists(pool_pid), timeout=30, what="the pool's end")
    assert redis_client.lrange(RUNS_KEY, 0, -1) == [b"start:j", b"end:j"]  # not cut
    log = (tmp_path / "worker_log").read_text()
    assert "The UI that ran this pool is gone: stopping warm" in log
    assert "Killing" not in log
