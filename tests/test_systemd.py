"""systemd around the pool, with real parts only.

The notifications: each test opens a datagram socket as systemd does (``SO_PASSCRED``:
the kernel says which process sent each datagram), runs the real ``tuitop --no-ui``
with ``NOTIFY_SOCKET`` naming it, and reads what arrives: READY once the workers are
registered (Redis is read at that moment), STATUS lines, RELOADING then READY around a
SIGHUP and a save, WATCHDOG at its cadence, STOPPING; and nothing from a worker or a
task process, whose environments hold none of the variables.

The unit: written by ``tuitop install-unit``, checked by ``systemd-analyze verify`` where
installed (else read), and its ExecStart run. The worker_log: rotated by the real
logrotate with the rules tuitop ships, ``create`` then SIGUSR1, and ``copytruncate``.
"""

from __future__ import annotations

import grp
import itertools
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import redis

from tests.pool import REPO, Pool, run_tuitop, wait_until, worker_heartbeats, write_config
from tests.tuleap import TASK, Tuleap, php_message
from tests.tuleapdb import database_inc, enqueue
from tuitop.backends.redis import keys
from tuitop.beats import PoolBeat
from tuitop.config import DatabaseSettings
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.message import encode
from tuitop.pool.service import PoolState, settled, status_line
from tuitop.sdnotify import (
    SystemdNotifier,
    monotonic_usec,
    socket_address,
    watchdog_interval,
)
from tuitop.systemdunit import shipped, unit_word

WATCHDOG_USEC = 400_000
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
UCRED = struct.Struct("iII")
"""struct ucred: pid, uid, gid."""


# --- a service manager's socket -----------------------------------------------------------


@dataclass
class Notification:
    at: float
    """When it arrived (monotonic)."""
    pid: int
    """Who sent it, as the kernel says."""
    fields: dict[str, str]
    seen: dict[str, object] = field(default_factory=dict)
    """What the test read at the moment it arrived (``on_ready``)."""


class NotifySocket:
    """A notification socket as systemd opens one: datagrams, with the sender's
    credentials. Records every notification as it arrives, in a thread."""

    def __init__(self, address: str, on_ready: Callable[[], dict[str, object]] | None = None):
        self.address = address
        self.on_ready = on_ready
        self.received: list[Notification] = []
        self._lock = threading.Lock()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._socket.bind(socket_address(address))
        self._socket.settimeout(0.1)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stopped.is_set():
            try:
                data, ancillary, _, _ = self._socket.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
            except TimeoutError:
                continue
            at = time.monotonic()
            pid = -1
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = UCRED.unpack(payload[: UCRED.size])[0]
            fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
            notification = Notification(at, pid, fields)
            if "READY" in fields and self.on_ready is not None:
                notification.seen = self.on_ready()
            with self._lock:
                self.received.append(notification)

    def all(self) -> list[Notification]:
        with self._lock:
            return list(self.received)

    def with_field(self, name: str, value: str | None = None) -> list[Notification]:
        return [
            n for n in self.all() if name in n.fields and (value is None or n.fields[name] == value)
        ]

    def statuses(self) -> list[str]:
        return [n.fields["STATUS"] for n in self.all() if "STATUS" in n.fields]

    def wait_for(self, name: str, value: str | None = None, count: int = 1) -> Notification:
        found = wait_until(
            lambda: len(self.with_field(name, value)) >= count and self.with_field(name, value),
            timeout=30,
            what=f"{count} notification(s) with {name}={value or '*'}",
        )
        return found[count - 1]  # type: ignore[no-any-return]

    def wait_for_status(self, pattern: str) -> str:
        regex = re.compile(pattern)
        return str(
            wait_until(
                lambda: next((s for s in self.statuses() if regex.search(s)), None),
                timeout=30,
                what=f"a STATUS matching {pattern!r}; got {self.statuses()}",
            )
        )

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=2)
        self._socket.close()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory for a socket (a socket's path is at most 107 bytes; pytest's
    tmp_path may be longer)."""
    directory = Path(tempfile.mkdtemp(prefix="tuitop-sd-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def start(
    pools: list[Pool], tmp_path: Path, config: Path, notify: NotifySocket, *args: str, **env: str
) -> Pool:
    environment = {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    environment.update(env)
    pool = Pool(
        tmp_path, config, "--handlers", "tests.handlers_for_tests", *args, env=environment
    ).start()
    pools.append(pool)
    return pool


def pool_beat(client: redis.Redis, name: str) -> PoolBeat:
    return PoolBeat.parse(client.hgetall(keys.pool(name)))


# --- the notifications, end to end ----------------------------------------------------------


def test_ready_comes_once_the_workers_are_registered_then_watchdog_status_and_stopping(
    tmp_path: Path,
    socket_dir: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
) -> None:
    def registered() -> dict[str, object]:
        return {
            "workers": len(worker_heartbeats(redis_client)),
            "pool": pool_beat(redis_client, "sd").running,
        }

    notify = NotifySocket(str(socket_dir / "notify"), on_ready=registered)
    try:
        config = write_config(tmp_path, port=redis_server.port, workers=2)
        pool = start(pools, tmp_path, config, notify, "--pool-name", "sd")
        ready = notify.wait_for("READY", "1")
        assert ready.seen == {"workers": 2, "pool": 2}
        assert ready.fields["STATUS"] == "2/2 workers, 0 waiting, redis ok"
        time.sleep(2.0)  # the watchdog's cadence, over 2 s of an idle pool

        pings = [n.at for n in notify.with_field("WATCHDOG", "1")]
        gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
        assert len(pings) >= 10
        # At least every WATCHDOG_USEC/2 (systemd's rule), and not at every wake-up.
        assert max(gaps) <= WATCHDOG_USEC / 1e6 / 2, gaps
        assert min(gaps) >= WATCHDOG_USEC / 1e6 / 8, gaps
        statuses = notify.statuses()
        assert all(a != b for a, b in itertools.pairwise(statuses)), statuses
        assert statuses[-1] == "2/2 workers, 0 waiting, redis ok"
        assert len(notify.with_field("READY")) == 1

        pool.signal(signal.SIGTERM)
        stopping = notify.wait_for("STOPPING", "1")
        assert stopping.fields["STATUS"].startswith("stopping: ")
        assert pool.wait() == 0
        assert {n.pid for n in notify.all()} == {pool.pid}
    finally:
        notify.close()


def test_status_says_how_many_messages_wait(
    tmp_path: Path,
    socket_dir: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
) -> None:
    notify = NotifySocket(str(socket_dir / "notify"))
    try:
        config = write_config(tmp_path, port=redis_server.port, workers=1)
        pool = start(pools, tmp_path, config, notify)
        notify.wait_for("READY", "1")
        for index in range(4):
            redis_client.lpush(keys.QUEUE, encode("test.sleep", {"id": index, "seconds": 1.5}))
        notify.wait_for_status(r"^1/1 workers, [1-3] waiting, redis ok$")
        notify.wait_for_status(r"^1/1 workers, 0 waiting, redis ok$")
        assert pool.stop() == 0
    finally:
        notify.close()


def test_a_reload_is_announced_on_sighup_and_on_a_save(
    tmp_path: Path,
    socket_dir: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
) -> None:
    notify = NotifySocket(str(socket_dir / "notify"))
    try:
        config = write_config(tmp_path, port=redis_server.port, workers=1)
        pool = start(pools, tmp_path, config, notify)
        notify.wait_for("READY", "1")

        before = monotonic_usec()
        pool.signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING", "1")
        # systemd (Type=notify-reload) matches this with the time it asked for a reload.
        assert before <= int(reloading.fields["MONOTONIC_USEC"]) <= monotonic_usec()
        ready_again = notify.wait_for("READY", "1", count=2)
        assert ready_again.at >= reloading.at
        assert ready_again.fields["STATUS"] == "1/1 workers, 0 waiting, redis ok"

        write_config(tmp_path, port=redis_server.port, workers=2)  # a save
        second = notify.wait_for("RELOADING", "1", count=2)
        assert notify.wait_for("READY", "1", count=3).at >= second.at
        notify.wait_for_status(r"^2/2 workers, 0 waiting, redis ok$")
        kinds = [
            "RELOADING" if "RELOADING" in n.fields else "READY"
            for n in notify.all()
            if "RELOADING" in n.fields or "READY" in n.fields
        ]
        assert kinds == ["READY", "RELOADING", "READY", "RELOADING", "READY"]
        assert pool.stop() == 0
    finally:
        notify.close()


def test_a_store_away_at_start_is_ready_and_says_so_until_it_comes(
    tmp_path: Path, socket_dir: Path, pools: list[Pool]
) -> None:
    server = EmbeddedRedis()
    notify = NotifySocket(str(socket_dir / "notify"))
    try:
        server.start()
        port = server.port
        server.stop()
        config = write_config(tmp_path, port=port, workers=1)
        pool = start(pools, tmp_path, config, notify)
        # Active at once (no start timeout, no restart loop): the pool retries by itself.
        ready = notify.wait_for("READY", "1")
        assert ready.fields["STATUS"] == "0/1 workers, redis unreachable, retrying"
        server.start()
        notify.wait_for_status(r"^1/1 workers, 0 waiting, redis ok$")
        assert len(notify.with_field("READY")) == 1
        assert pool.stop() == 0
    finally:
        notify.close()
        server.close()


def test_on_tuleaps_database_queue_the_status_counts_its_rows(
    tmp_path: Path, socket_dir: Path, pools: list[Pool], database: DatabaseSettings
) -> None:
    tuleap = Tuleap(tmp_path)
    notify = NotifySocket(str(socket_dir / "notify"))
    try:
        config = database_inc(tmp_path, database, workers=1)
        pool = start(
            pools, tmp_path, config, notify, *TASK, "--task-dir", str(tuleap.root), **tuleap.env
        )
        ready = notify.wait_for("READY", "1")
        assert ready.fields["STATUS"] == "1/1 workers, 0 waiting, database ok"
        for index in range(3):
            enqueue(database, "tuleap.test", {"id": f"r{index}", "standin": {"sleep": 1.5}})
        notify.wait_for_status(r"^1/1 workers, [12] waiting, database ok$")
        notify.wait_for_status(r"^1/1 workers, 0 waiting, database ok$")
        assert pool.stop() == 0
    finally:
        notify.close()


def environment_of(pid: int) -> dict[str, str]:
    return psutil.Process(pid).environ()


def test_only_the_pool_notifies_and_no_worker_or_task_inherits_the_socket(
    tmp_path: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
) -> None:
    tuleap = Tuleap(tmp_path)
    # The abstract namespace this time (NOTIFY_SOCKET=@name).
    notify = NotifySocket(f"@tuitop-test-{uuid.uuid4().hex}")
    try:
        config = write_config(tmp_path, port=redis_server.port, workers=2)
        environment = {**tuleap.env, "WATCHDOG_PID": "0"}  # a pid not the pool's: no pings
        pool = start(
            pools, tmp_path, config, notify, *TASK, "--task-dir", str(tuleap.root), **environment
        )
        notify.wait_for("READY", "1")
        payload = json.dumps({"id": "t", "standin": {"sleep": 1.5}})
        redis_client.lpush(keys.QUEUE, php_message("tuleap.test", payload, time.time()))
        [run] = wait_until(lambda: tuleap.runs_of("t"), 20, "the task to start")
        family = psutil.Process(pool.pid).children(recursive=True)
        assert any(p.pid == int(str(run["pid"])) for p in family)
        assert len(family) >= 4  # the forkserver, two workers, the task
        for process in family:
            inherited = set(SYSTEMD_VARIABLES) & set(environment_of(process.pid))
            assert not inherited, f"{process.cmdline()} inherited {inherited}"
        wait_until(lambda: tuleap.runs_of("t", "end"), 20, "the task to end")
        assert pool.stop() == 0
        assert {n.pid for n in notify.all()} == {pool.pid}
        assert not notify.with_field("WATCHDOG")
        assert notify.with_field("STOPPING", "1")
    finally:
        notify.close()


# --- the protocol and the decisions, without a pool -------------------------------------------


def test_the_socket_is_a_path_or_an_abstract_name() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@name") == b"\0name"
    for unusable in ("vsock:2:1234", "relative", "@", ""):
        with pytest.raises(ValueError):
            socket_address(unusable)


def test_the_watchdog_is_ours_only_when_its_pid_is() -> None:
    assert watchdog_interval("400000", None, 42) == 0.4
    assert watchdog_interval("400000", "42", 42) == 0.4
    assert watchdog_interval("400000", "43", 42) is None
    for unusable in (None, "0", "-5", "soon"):
        assert watchdog_interval(unusable, None, 42) is None


def test_the_variables_leave_the_environment_as_they_are_read(socket_dir: Path) -> None:
    address = str(socket_dir / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(5)
    try:
        environ = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000", "PATH": "/bin"}
        notifier = SystemdNotifier.from_environment(environ)
        assert environ == {"PATH": "/bin"}
        assert notifier is not None and notifier.watchdog == 2.0
        notifier.send({"READY": "1", "STATUS": "two\nlines"})
        assert listener.recv(4096) == b"READY=1\nSTATUS=two lines"
        notifier.close()
        assert SystemdNotifier.from_environment({"WATCHDOG_USEC": "1"}) is None
    finally:
        listener.close()


def test_ready_waits_for_the_workers_unless_something_outside_holds_them() -> None:
    up = PoolState(wanted=3, running=3, registered=3, waiting=12)
    assert settled(up)
    assert status_line(up) == "3/3 workers, 12 waiting, redis ok"
    assert not settled(PoolState(wanted=3, running=3, registered=2))
    assert not settled(PoolState(wanted=3, running=2, registered=2))
    assert not settled(PoolState(wanted=3, running=3, registered=3, published=False))
    away = PoolState(wanted=3, running=0, registered=0, store_ok=False)
    assert settled(away)
    assert status_line(away) == "0/3 workers, redis unreachable, retrying"
    assert not settled(
        PoolState(wanted=1, running=0, registered=0, store_ok=False, store_tried=False)
    )
    failing = PoolState(wanted=2, running=0, registered=0, starts_held=True, store="database")
    assert settled(failing)
    assert status_line(failing) == "0/2 workers, database ok, workers fail at start (see the log)"
    assert settled(PoolState(wanted=0, running=0, registered=0, store=""))
    assert not settled(PoolState(wanted=1, running=1, registered=1, stopping=True))
    assert status_line(PoolState(wanted=1, running=1, registered=1, config_error=True)) == (
        "1/1 workers, redis ok, config error: the last good config stays"
    )


# --- the unit ----------------------------------------------------------------------------------


def read_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections and keys (a key may repeat); comments skipped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def verify(path: Path) -> None:
    """``systemd-analyze verify`` says nothing against the unit (it warns on stderr and
    exits 0 for an unknown key or a bad value: both count here)."""
    if shutil.which("systemd-analyze") is None:
        return
    result = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    said = [line for line in result.stderr.splitlines() if path.name in line]
    assert result.returncode == 0 and not said, result.stderr


def test_install_unit_writes_a_unit_systemd_accepts_and_whose_command_runs(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    config = write_config(tmp_path, port=redis_server.port)
    unit_dir = tmp_path / "system"
    result = run_tuitop("--config", str(config), "install-unit", "--unit-dir", str(unit_dir))
    assert result.returncode == 0, result.stderr
    path = unit_dir / "tuitop.service"
    assert f"wrote {path}" in result.stdout
    assert "systemctl daemon-reload && systemctl enable --now tuitop.service" in result.stdout
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    verify(path)

    service = read_unit(path.read_text())["Service"]
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert service["KillMode"] == ["mixed"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["Restart"] == ["on-failure"]
    assert int(service["WatchdogSec"][0]) >= 30
    assert int(service["TimeoutStopSec"][0]) > 30  # the pool's default --grace
    words = service["ExecStart"][0].split()
    assert words == [sys.executable, "-m", "tuitop", "--no-ui", "--config", str(config)]
    # The command runs (here: only its config check, not a pool).
    checked = subprocess.run(
        [*words[:-3], "config", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
    )
    assert checked.returncode == 0 and f"127.0.0.1:{redis_server.port}" in checked.stdout
    has_tuleap_user = "codendiadm" in {entry.pw_name for entry in pwd.getpwall()}
    assert ("User" in service) == has_tuleap_user
    # It lives and dies with Tuleap, never beside Tuleap's own workers; with no Tuleap on
    # this host it neither waits for it nor checks it, and starts at boot.
    sections = read_unit(path.read_text())
    assert sections["Unit"]["PartOf"] == ["tuleap.service"]
    assert sections["Unit"]["After"][0].split()[0] == "tuleap.service"
    assert sections["Unit"]["Conflicts"] == ["tuleap-workers.service"]
    if not os.path.exists("/usr/bin/tuleap"):
        assert "ExecStartPre" not in service
        assert sections["Install"]["WantedBy"] == ["multi-user.target"]
        assert "no /usr/bin/tuleap" in result.stdout

    # Again: unchanged. Edited by hand: refused unless --force. --dry-run writes nothing.
    again = run_tuitop("--config", str(config), "install-unit", "--unit-dir", str(unit_dir))
    assert again.returncode == 0 and f"unchanged: {path}" in again.stdout
    path.write_text(path.read_text() + "# edited\n")
    refused = run_tuitop("install-unit", "--unit-dir", str(unit_dir))
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert path.read_text().endswith("# edited\n")
    dry = run_tuitop("install-unit", "--unit-dir", str(tmp_path / "none"), "--dry-run")
    assert dry.returncode == 0 and "ExecStart=" in dry.stdout
    assert not (tmp_path / "none").exists()
    forced = run_tuitop("install-unit", "--unit-dir", str(unit_dir), "--force")
    assert forced.returncode == 0 and "# edited" not in path.read_text()


def test_where_tuleap_is_installed_the_unit_waits_for_it_checks_it_and_starts_with_it(
    tmp_path: Path,
) -> None:
    """As tuleap-worker@.service: wait until ``tuleap --version`` answers, then ``tuleap
    sanity-check``, before the pool starts; wanted by tuleap.service."""
    cli = REPO / "tests" / "bin" / "tuleap"  # Tuleap's CLI, as the tests stand it in
    unit_dir = tmp_path / "system"
    result = run_tuitop("install-unit", "--unit-dir", str(unit_dir), "--tuleap-cli", str(cli))
    assert result.returncode == 0, result.stderr
    path = unit_dir / "tuitop.service"
    verify(path)
    sections = read_unit(path.read_text())
    assert sections["Install"]["WantedBy"] == ["tuleap.service"]
    assert sections["Unit"]["PartOf"] == ["tuleap.service"]
    wait, check = sections["Service"]["ExecStartPre"]
    assert check == f"{cli} sanity-check"
    # Both run as systemd would (here in a Tuleap root whose CLI answers).
    root = tmp_path / "tuleap"
    root.mkdir()
    (root / "VERSION").write_text("17.4\n")
    shell = shlex.split(wait)
    waited = subprocess.run(shell, cwd=root, capture_output=True, text=True, timeout=30)
    assert waited.returncode == 0 and "17.4" in waited.stdout
    checked = subprocess.run(shlex.split(check), cwd=root, capture_output=True, timeout=30)
    assert checked.returncode == 0
    (root / "SANITY").write_text("MySQL 8.0 or 8.4 is needed\n")
    refused = subprocess.run(shlex.split(check), cwd=root, capture_output=True, timeout=30)
    assert refused.returncode != 0  # the unit would not start


def test_a_user_unit_goes_to_the_users_manager_and_runs_as_its_user(tmp_path: Path) -> None:
    result = run_tuitop("install-unit", "--user", env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    path = tmp_path / "systemd" / "user" / "tuitop.service"
    assert "systemctl --user daemon-reload" in result.stdout
    verify(path)
    sections = read_unit(path.read_text())
    assert "User" not in sections["Service"] and "Group" not in sections["Service"]
    assert sections["Install"]["WantedBy"] == ["default.target"]


def test_a_command_word_is_escaped_for_a_unit_file() -> None:
    assert unit_word("/opt/tuitop/bin/python") == "/opt/tuitop/bin/python"
    assert unit_word("/opt/my tuitop/python") == '"/opt/my tuitop/python"'
    assert unit_word("/srv/100%/$HOME") == "/srv/100%%/$$HOME"
    assert unit_word('a"b') == '"a\\"b"'


# --- the worker_log and logrotate -------------------------------------------------------------


def logrotate_rules(log: Path, *, postrotate: str | None, copytruncate: bool = False) -> str:
    """The rules tuitop ships, for ``log`` and this test's user; ``postrotate`` replaces
    the shipped one (there is no systemd here to send the signal)."""
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    text = shipped("tuitop.logrotate").replace("/var/log/tuleap/worker_log", str(log))
    text = text.replace("codendiadm codendiadm", f"{user} {group}")
    text = re.sub(
        r"postrotate\n.*?endscript",
        f"postrotate\n        {postrotate}\n    endscript" if postrotate else "",
        text,
        flags=re.DOTALL,
    )
    if copytruncate:
        text = re.sub(r"create .*", "copytruncate", text)
    return text


def rotate(tmp_path: Path, rules: str) -> None:
    logrotate = shutil.which("logrotate") or shutil.which("logrotate", path="/usr/sbin:/sbin")
    if logrotate is None:
        pytest.skip("logrotate is not installed (.ci/run installs it)")
    (tmp_path / "logrotate.conf").write_text(rules)
    result = subprocess.run(
        [
            logrotate,
            "-f",
            "-s",
            str(tmp_path / "logrotate.state"),
            str(tmp_path / "logrotate.conf"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def holds_open(pid: int, path: Path) -> bool:
    return any(Path(f.path) == path for f in psutil.Process(pid).open_files())


def lines_of(path: Path, pid: int) -> list[str]:
    return [line for line in path.read_text().splitlines() if f" [{pid}] " in line]


def test_the_worker_log_follows_a_create_rotation_and_sigusr1(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    pool = Pool(tmp_path, config).start()
    pools.append(pool)
    [worker] = wait_until(lambda: list(worker_heartbeats(redis_client).values()), what="a worker")
    worker_pid = int(worker["pid"])
    pool.wait_for_log("Wait for messages")
    log, old = pool.log_file, tmp_path / "worker_log.1"

    rotate(tmp_path, logrotate_rules(log, postrotate=f"kill -USR1 {pool.pid}"))
    assert old.exists() and log.exists()
    # The pool lets go of the old file at once (SIGUSR1); the idle worker within a beat.
    wait_until(lambda: not holds_open(pool.pid, old), 5, "the pool to let go of worker_log.1")
    wait_until(lambda: not holds_open(worker_pid, old), 5, "the worker to let go of it")
    assert holds_open(pool.pid, log) and holds_open(worker_pid, log)
    rotated = old.read_text()

    redis_client.lpush(keys.QUEUE, encode("test.count", {"id": 1}))
    pool.wait_for_log("Message processed")
    pool.signal(signal.SIGTTIN)  # a line of the pool's
    pool.wait_for_log("workers 1 → 2 for this session")
    assert lines_of(log, worker_pid) and lines_of(log, pool.pid)
    assert old.read_text() == rotated  # nothing more went to the old file
    assert pool.stop() == 0


def test_the_worker_log_follows_a_copytruncate_rotation(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    pool = Pool(tmp_path, config).start()
    pools.append(pool)
    [worker] = wait_until(lambda: list(worker_heartbeats(redis_client).values()), what="a worker")
    worker_pid = int(worker["pid"])
    pool.wait_for_log("Wait for messages")
    log = pool.log_file

    rotate(tmp_path, logrotate_rules(log, postrotate=None, copytruncate=True))
    assert "Wait for messages" in (tmp_path / "worker_log.1").read_text()
    redis_client.lpush(keys.QUEUE, encode("test.count", {"id": 1}))
    pool.wait_for_log("Message processed")
    pool.signal(signal.SIGTTIN)
    pool.wait_for_log("workers 1 → 2 for this session")
    # Written at the new end of the truncated file: no hole of NUL bytes before them.
    data = log.read_bytes()
    assert b"\0" not in data and re.match(rb"\d{4}-\d\d-\d\dT", data)
    assert lines_of(log, worker_pid) and lines_of(log, pool.pid)
    assert pool.stop() == 0


def test_the_pool_survives_sigusr1_without_a_log_file(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    pool = Pool(tmp_path, config, "--log-file", "").start()
    pools.append(pool)
    wait_until(lambda: "Start service" in pool.output(), what="a worker")
    pool.signal(signal.SIGUSR1)  # its default action would end the pool
    time.sleep(0.5)
    assert pool.process is not None and pool.process.poll() is None
    assert pool.stop() == 0


def test_a_pool_paused_before_it_is_ready_still_says_ready(
    tmp_path: Path,
    socket_dir: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
) -> None:
    # 'tuitop ctl pause' sent while the unit restarts: the pool obeys it at its first
    # turn, before its workers run. READY must come all the same (else systemd's start
    # times out and the unit fails), and the status line says why no worker runs.
    command = {"action": "pause", "id": "p", "at": time.time(), "by": "me@here"}
    redis_client.rpush(keys.control("sd"), json.dumps(command).encode())
    notify = NotifySocket(str(socket_dir / "notify"))
    try:
        config = write_config(tmp_path, port=redis_server.port, workers=2)
        pool = start(pools, tmp_path, config, notify, "--pool-name", "sd")
        pool.wait_for_log("Command from me@here: pause")
        ready = notify.wait_for("READY", "1")
        assert "paused" in ready.fields["STATUS"], ready.fields
        assert pool.stop() == 0
    finally:
        notify.close()
