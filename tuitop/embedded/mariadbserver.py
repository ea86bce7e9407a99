"""An embedded, private MariaDB server: for the tests of the database queue, and the demo.

:class:`EmbeddedMariaDB` initialises a data directory of its own (``mariadb-install-db``)
and runs ``mariadbd`` bound to 127.0.0.1 on a free port and a unix socket in that
directory, with no option file read (``--no-defaults``: the machine's server and its
settings are never touched). It can be killed (a crash) and started again on the same
port and data. The child gets SIGKILL when its owner dies (Linux), and :meth:`close`
removes what it made.

The binaries are Debian's ``mariadb-server`` ones, found on ``PATH`` or in ``/usr/sbin``.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Protocol

import pymysql

from tuitop.backends.db.schema import create_tuleap_queue
from tuitop.config import DatabaseSettings, Secret
from tuitop.embedded.redisserver import HOST, free_port
from tuitop.osutil import set_parent_death_signal

SERVER_NAMES = ("mariadbd", "mysqld")
INSTALL_NAMES = ("mariadb-install-db", "mysql_install_db")
START_TIMEOUT = 30.0


class MariaDBServerError(Exception):
    """The embedded server cannot be found or started (the message ends with its log)."""


def find_binary(names: tuple[str, ...]) -> str | None:
    """The first of ``names`` on PATH or in /usr/sbin, or None."""
    for name in names:
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
        if found:
            return found
    return None


def available() -> bool:
    """Whether this machine has the MariaDB server binaries."""
    return find_binary(SERVER_NAMES) is not None and find_binary(INSTALL_NAMES) is not None


class DatabaseServer(Protocol):
    """A server tuitop's tests and demo make databases on: where it listens (TCP), and a
    connection with every privilege (``connect()``)."""

    host: str
    port: int

    def connect(self, database: str | None = None) -> pymysql.connections.Connection: ...


class EmbeddedMariaDB:
    """``start()`` it, connect as ``root`` without a password (``connect()``), ``close()``."""

    host = HOST

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._owned = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="tuitop-mariadb-"))
        self.port = free_port()
        self.socket = self.directory / "mariadb.sock"
        self.data = self.directory / "data"
        self.log = self.directory / "mariadb.err"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> EmbeddedMariaDB:
        server, install = find_binary(SERVER_NAMES), find_binary(INSTALL_NAMES)
        if server is None or install is None:
            raise MariaDBServerError("no mariadbd / mariadb-install-db (Debian: mariadb-server)")
        user = getpass.getuser()
        self.directory.mkdir(parents=True, exist_ok=True)
        # A temporary directory of its own: a server starting removes the "#sql…" files
        # it finds in its tmpdir — another private server's, starting at the same time
        # (two test processes), failed its bootstrap ("Could not remove temporary table").
        tmpdir = self.directory / "tmp"
        tmpdir.mkdir(exist_ok=True)
        if not self.data.exists():
            done = subprocess.run(
                [install, "--no-defaults", f"--user={user}", f"--datadir={self.data}",
                 "--auth-root-authentication-method=normal", "--skip-test-db",
                 f"--tmpdir={tmpdir}"],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            if done.returncode != 0:
                raise MariaDBServerError(f"{install} failed: {done.stderr[-2000:]}")
        self.process = subprocess.Popen(
            [server, "--no-defaults", f"--user={user}", f"--datadir={self.data}",
             f"--socket={self.socket}", f"--port={self.port}", f"--bind-address={HOST}",
             "--skip-name-resolve", "--innodb-buffer-pool-size=16M", f"--tmpdir={tmpdir}",
             f"--pid-file={self.directory / 'mariadb.pid'}", f"--log-error={self.log}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lambda: set_parent_death_signal(signal.SIGKILL),
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self.connect().close()
                return self
            except pymysql.MySQLError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise MariaDBServerError(
                        f"mariadbd did not start: {self._log_tail()}"
                    ) from None
                time.sleep(0.1)

    def connect(self, database: str | None = None) -> pymysql.connections.Connection:
        """A new connection over the unix socket, as root."""
        return pymysql.connect(
            unix_socket=str(self.socket), user="root", database=database, autocommit=True
        )

    def kill(self) -> None:
        """SIGKILL, as a crash: the data stays, :meth:`start` runs it again."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait()
            self.process = None

    def close(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
            self.process = None
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
        return "(no log)"


def create_tuleap_database(
    server: DatabaseServer, name: str, user: str, password: str
) -> DatabaseSettings:
    """A database ``name`` holding Tuleap's ``async_events`` (its DDL), all of it granted
    to ``user`` (made if missing) with ``password``, reached over TCP: as a Tuleap
    server's database looks to its workers."""
    with server.connect() as connection, connection.cursor() as cursor:
        cursor.execute("CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s", (user, password))
        cursor.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        cursor.execute(f"GRANT ALL ON {name}.* TO %s@'%%'", (user,))
        cursor.execute(f"USE {name}")
        create_tuleap_queue(cursor)
    return DatabaseSettings(
        host=server.host, port=server.port, name=name, user=user, password=Secret(password)
    )
