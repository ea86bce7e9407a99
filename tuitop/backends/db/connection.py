"""Connections to Tuleap's database, built from Settings, and errors said plainly.

PyMySQL (pure Python: nothing to build against libmysqlclient on a forge host). Every
connection runs in UTC (``time_zone = '+00:00'``: the store's clock, ``UNIX_TIMESTAMP(NOW(6))``,
is then exact in every season) and READ COMMITTED (a worker's take locks only the rows it
takes; no long read view holds the purge back). ``localhost`` means the server's unix
socket, as it does for Tuleap's PDO and every MySQL client library, when one of the
usual sockets exists; else TCP. The server's flavour and version (:mod:`.dialect`) are
read from its handshake.

:class:`Session` owns one connection, made again after an error: a statement that failed
on a broken connection is never sent again on its own (it may have run); the caller's
back-off decides. A connection the server would have closed for its silence
(``wait_timeout``: a job longer than that, a worker idle) is made anew before it is used,
so that a long job never reads as the database gone and back.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pymysql
from pymysql.constants import CLIENT
from pymysql.cursors import Cursor

from tuitop.backends.base import CONNECT_TIMEOUT, ErrorTypes
from tuitop.backends.db.dialect import Dialect
from tuitop.backends.errors import (
    CredentialsRefused,
    MaybeWritten,
    StoreError,
    StoreUnavailable,
)
from tuitop.config import DatabaseSettings, mask_secrets

ERRORS: ErrorTypes = (pymysql.MySQLError,)
LOCAL_SOCKETS = (
    "/var/lib/mysql/mysql.sock",  # RHEL, Tuleap's platform
    "/run/mysqld/mysqld.sock",  # Debian, Ubuntu
    "/var/run/mysqld/mysqld.sock",
    "/tmp/mysql.sock",
)
RETRIED_ERRORS = (1213,)
"""A deadlock: InnoDB rolled the transaction back whole; run it again. (A lock wait
timeout, 1205, is said to the caller: a row held that long is held by a client that is
stuck, and waiting again would hold the caller up as long.)"""
RETRIES = 5
CONNECTION_LOST = (2002, 2006, 2013, 2055, 4031)
"""The connection is gone: refused or never made (2002), the server gone away or lost
mid-query, or (MySQL ≥ 8.0.24, 4031) closed by the server for the client's silence."""
AUTH_ERRORS = (1045, 1698)
"""Access denied: for the user and password, for the auth plugin."""
SENT_AND_LOST = (2006, 2013, 2055)
"""The connection lost, or the reply late, once the request was sent: a commit may be
running still."""
NO_DATABASE = (1044, 1049)
"""Access denied to the database (MariaDB's answer for one that does not exist too, to a
user with no grant on it), or no such database."""

T = TypeVar("T")


def local_socket(host: str, candidates: Sequence[str] = LOCAL_SOCKETS) -> str | None:
    """The unix socket a client uses for ``host`` (only ``localhost`` has one)."""
    if host != "localhost":
        return None
    return next((path for path in candidates if os.path.exists(path)), None)


def connect(
    settings: DatabaseSettings,
    *,
    program: str = "tuitop",
    read_timeout: float | None = 30.0,
    lock_wait: int | None = None,
) -> pymysql.connections.Connection[Cursor]:
    """A new connection to ``settings``' database (autocommit on; transactions explicit;
    a row lock waited for ``lock_wait`` s at most, then error 1205). Raises
    pymysql.MySQLError when it cannot be made."""
    ssl: dict[str, Any] | None = None
    if settings.tls:
        # As Tuleap's PDO does: TLS; the server's certificate checked against the CA file
        # and its host name only with $sys_db_ssl_verify_cert (PyMySQL takes the dict
        # whole: the separate ssl_* arguments would replace it).
        ca = settings.tls_ca if settings.tls_ca and os.path.isfile(settings.tls_ca) else None
        ssl = {"ca": ca, "check_hostname": settings.tls_verify, "verify_mode": settings.tls_verify}
    connection = pymysql.connect(
        host=settings.host,
        port=settings.port,
        unix_socket=local_socket(settings.host),
        user=settings.user,
        password=settings.password.reveal(),
        database=settings.name,
        charset="utf8mb4",
        autocommit=True,
        connect_timeout=int(CONNECT_TIMEOUT),
        read_timeout=read_timeout,
        write_timeout=read_timeout,
        # Several statements in one round trip; UPDATE counts the rows it found (a
        # heartbeat that writes what was there already still finds its row).
        client_flag=CLIENT.MULTI_STATEMENTS | CLIENT.FOUND_ROWS,
        init_command=(
            "SET time_zone = '+00:00'; SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"
        ),
        program_name=program[:32],
        ssl=ssl,
    )
    settings_sql = [_end_idle_transactions(dialect_of(connection))]
    if lock_wait is not None:
        settings_sql.append(f"SET SESSION innodb_lock_wait_timeout = {int(lock_wait)}")
    with connection.cursor() as cursor:
        cursor.execute("; ".join(settings_sql))
        while cursor.nextset():
            pass
    return connection


def dialect_of(connection: pymysql.connections.Connection[Cursor]) -> Dialect:
    """The flavour and version the server said in its handshake."""
    # PyMySQL's get_server_info(), untyped: the version string of the handshake.
    return Dialect.of(str(getattr(connection, "server_version", "") or ""))


def silence_allowed(connection: pymysql.connections.Connection[Cursor]) -> float:
    """Seconds a connection may stay silent before the server closes it (its session's
    ``wait_timeout``)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT @@SESSION.wait_timeout")
        row = cursor.fetchone()
    return float(row[0]) if row else float("inf")


IDLE_TRANSACTION_SECONDS = 10
"""A transaction of tuitop's that waits this long for its client is the client's end: the
server rolls it back, and its locks go (a worker frozen mid-take — a VM paused, a SIGSTOP
— would otherwise hide the rows it locked from every other worker until it thaws)."""
RECONNECT_MARGIN = 1.0
"""A connection silent for its ``wait_timeout`` less this is made anew before its use."""


def _end_idle_transactions(dialect: Dialect) -> str:
    """What ends a transaction whose client went silent: MariaDB's
    ``idle_transaction_timeout``; on MySQL, which has none, the session's
    ``wait_timeout`` (the server closes the connection, which rolls it back — so any
    connection of tuitop's silent that long is closed: :class:`Session` makes it anew)."""
    if dialect.ends_idle_transactions:
        return f"SET SESSION idle_transaction_timeout = {IDLE_TRANSACTION_SECONDS}"
    return f"SET SESSION wait_timeout = {IDLE_TRANSACTION_SECONDS}"


REFUSED = (1062, 1205, 1213, 1292, 1366, 1406, 3140, 4025)
"""Errors of one statement the server refused (a duplicate key, a lock waited for too
long, a deadlock, a value or JSON it will not take, a CHECK): the server answers."""


def is_refusal(error: BaseException) -> bool:
    """Whether the server refused one statement, rather than does not answer."""
    return isinstance(error, pymysql.MySQLError) and _code(error) in REFUSED


def is_auth_error(error: BaseException) -> bool:
    return isinstance(error, pymysql.MySQLError) and _code(error) in AUTH_ERRORS


def describe_error(error: BaseException, settings: DatabaseSettings) -> str:
    """One line an operator can act on; the password never appears in it."""
    where = settings.address
    code = _code(error)
    if code in AUTH_ERRORS:
        if settings.password:
            return f"the database at {where} refused the user or the password ($sys_dbpasswd)"
        return f"the database at {where} refused the user without a password ($sys_dbpasswd)"
    if code in (2003, *CONNECTION_LOST):
        detail = _text(error)
        return f"the database at {where} is unreachable: {mask_secrets(detail, _secret(settings))}"
    if code in NO_DATABASE:
        return (
            f"the database at {where} has no database {settings.name!r} that "
            f"{settings.user!r} may use ($sys_dbname, $sys_dbuser)"
        )
    if code == 1146:
        quoted = re.search(r"'([^']*)'", _text(error))
        table = quoted.group(1).split(".")[-1] if quoted else "of tuitop's"
        return (
            f"the database at {where} has no table {table} (Tuleap's queue is its "
            "async_events table, Tuleap ≥ 15.9)"
        )
    text = f"the database at {where}: {type(error).__name__}: {_text(error)}"
    return mask_secrets(text, _secret(settings))


def translate(error: BaseException, settings: DatabaseSettings) -> StoreError:
    """tuitop's own error for a database error (:mod:`tuitop.backends.errors`): a
    statement refused (the link stays up), refused credentials, a connection lost after
    the request went (a commit may have landed), or the server away."""
    text = describe_error(error, settings)
    if is_auth_error(error):
        return CredentialsRefused(text)
    if _code(error) in SENT_AND_LOST:
        return MaybeWritten(text)
    if is_refusal(error):
        return StoreError(text)
    return StoreUnavailable(text)


def _secret(settings: DatabaseSettings) -> list[str]:
    return [settings.password.reveal()]


def _code(error: BaseException) -> int | None:
    if error.args and isinstance(error.args[0], int):
        return error.args[0]
    return None


def _text(error: BaseException) -> str:
    if len(error.args) >= 2:
        return str(error.args[1])
    return str(error)


class Session:
    """One connection to the database, made at first use and again after an error.

    Thread-safe: the threads of one process share it (a worker's loop and its heartbeat,
    a pool's loop, its doorbell and its ``/metrics``), one statement or transaction at a
    time, so that a pool holds one connection a worker and one of its own — the forge's
    ``max_connections`` is sized for Tuleap's workers and its front ends."""

    def __init__(
        self,
        settings: DatabaseSettings,
        *,
        program: str,
        read_timeout: float | None = 30.0,
        lock_wait: int | None = None,
    ) -> None:
        self.settings = settings
        self._program = program
        self._read_timeout = read_timeout
        self._lock_wait = lock_wait
        self._connection: pymysql.connections.Connection[Cursor] | None = None
        self._dialect: Dialect | None = None
        self._silence_allowed = float("inf")
        self._used_at = 0.0
        self._lock = threading.RLock()

    def connection(self) -> pymysql.connections.Connection[Cursor]:
        """The session's connection: made now if there is none, or if it was silent for
        so long that the server has closed it or is about to."""
        with self._lock:
            return self._connection_now()

    def _connection_now(self) -> pymysql.connections.Connection[Cursor]:
        now = time.monotonic()
        if (
            self._connection is not None
            and now - self._used_at >= self._silence_allowed - RECONNECT_MARGIN
        ):
            self.close()
        if self._connection is None:
            connection = connect(
                self.settings,
                program=self._program,
                read_timeout=self._read_timeout,
                lock_wait=self._lock_wait,
            )
            self._dialect = dialect_of(connection)
            try:
                self._silence_allowed = silence_allowed(connection)
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        self._used_at = now
        return self._connection

    @property
    def dialect(self) -> Dialect:
        """The server's flavour and version (asks it by connecting, if not yet)."""
        if self._dialect is None:
            self.connection()
        assert self._dialect is not None
        return self._dialect

    def run(self, body: Callable[[Cursor], T], *, again_after_deadlock: bool = False) -> T:
        """``body`` with a cursor (each statement commits, unless ``body`` starts a
        transaction itself). With ``again_after_deadlock``, ``body`` — a whole transaction
        — runs again when InnoDB rolled it back for a deadlock
        (SKIP LOCKED takes of several workers at once can meet on the queue's index)."""
        with self._lock:
            return self._run(body, again_after_deadlock)

    def _run(self, body: Callable[[Cursor], T], again_after_deadlock: bool) -> T:
        for attempt in range(RETRIES + 1):
            try:
                with self.connection().cursor() as cursor:
                    result = body(cursor)
                self._used_at = time.monotonic()
                return result
            except pymysql.MySQLError as error:
                if again_after_deadlock and _code(error) in RETRIED_ERRORS and attempt < RETRIES:
                    with contextlib.suppress(pymysql.MySQLError):
                        self.connection().rollback()
                    continue
                self.close()
                raise
            except BaseException:
                # A signal's exception cut a statement short: what is left of its answer
                # must not be read as the next statement's (another thread's) answer.
                self.close()
                raise
        raise AssertionError("unreachable")

    def transaction(self, body: Callable[[Cursor], T]) -> T:
        """``body`` in one transaction, committed; run again whole after a deadlock. Any
        error rolls it back (a connection lost: the server rolls it back)."""
        with self._lock:
            return self._transaction(body)

    def _transaction(self, body: Callable[[Cursor], T]) -> T:
        for attempt in range(RETRIES + 1):
            connection = self.connection()
            try:
                connection.begin()
                with connection.cursor() as cursor:
                    result = body(cursor)
                connection.commit()
                self._used_at = time.monotonic()
                return result
            except pymysql.MySQLError as error:
                if _code(error) in RETRIED_ERRORS and attempt < RETRIES:
                    with contextlib.suppress(pymysql.MySQLError):
                        connection.rollback()
                    continue
                self.close()
                raise
            except BaseException:
                self.close()  # mid-transaction: the server rolls it back with the connection
                raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    self._connection.close()
                self._connection = None


def database_clock(session: Session) -> float:
    """The database's clock now, in epoch seconds (sessions run in UTC)."""

    def ask(cursor: Cursor) -> float:
        cursor.execute("SELECT UNIX_TIMESTAMP(NOW(6))")
        row = cursor.fetchone()
        return float(row[0]) if row else 0.0

    return session.run(ask)


def placeholders(count: int) -> str:
    """``%s, %s, …`` for an ``IN (…)`` of ``count`` values."""
    return ", ".join(["%s"] * count)


def execute_all(cursor: Cursor, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
    """Sends several statements in one round trip; returns each one's row count (rows
    changed or found). A statement that returns rows must be the last: its rows are left
    on the cursor."""
    sql = ";\n".join(cursor.mogrify(text, tuple(args)) for text, args in statements)
    cursor.execute(sql)
    counts = [cursor.rowcount]
    while len(counts) < len(statements) and cursor.nextset():
        counts.append(cursor.rowcount)
    return counts
