"""Tuleap's database queue for the tests: a fresh database on a private MariaDB server,
Tuleap's ``async_events`` in it (its DDL), and inserts made the way Tuleap's front end
makes them (``DBPersistentQueueDAO::saveMessage``).

With ``TUITOP_TEST_DB=mysql://USER:PASSWORD@HOST:PORT/`` the same tests run on that server
instead (MySQL 8.0/8.4, another MariaDB): each test makes a database of its own there,
granted to a user made for the run (``tuitop_test_…``, never an existing user such as
Tuleap's), both dropped at the end of the run; the URL's user needs CREATE, DROP,
CREATE USER and GRANT OPTION. The few tests that kill and start their server again are
skipped then.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql

from tuitop.backends.db.schema import QUEUE_NAME
from tuitop.config import DatabaseSettings
from tuitop.embedded.mariadbserver import DatabaseServer, create_tuleap_database

USER = "tuleapadm"
PASSWORD = "db-s3cret-password-for-the-tests"


def tuleap_uuid7(now: float) -> bytes:
    """A UUIDv7 as ramsey/uuid makes Tuleap's ids: 48 bits of milliseconds, then random
    (written here apart from tuitop's own, so that the tests do not check it by itself)."""
    millis = int(now * 1000).to_bytes(6, "big")
    rest = bytearray(os.urandom(10))
    rest[0] = 0x70 | (rest[0] & 0x0F)
    rest[2] = 0x80 | (rest[2] & 0x3F)
    return millis + bytes(rest)


SERVER_VARIABLE = "TUITOP_TEST_DB"


class ExternalServer:
    """The server ``TUITOP_TEST_DB`` names (``mysql://USER:PASSWORD@HOST:PORT/``): a
    :class:`~tuitop.embedded.mariadbserver.DatabaseServer` the tests neither start nor stop; the
    databases made on it are dropped by :meth:`close`."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mysql", "mariadb") or not parts.hostname:
            raise ValueError(f"{SERVER_VARIABLE} must be mysql://USER:PASSWORD@HOST:PORT/")
        self.host = parts.hostname
        self.port = parts.port or 3306
        self.user = unquote(parts.username or "root")
        self.password = unquote(parts.password or "")
        self.made: list[str] = []
        self.test_user = f"tuitop_test_{uuid.uuid4().hex[:8]}"
        """The user the run's databases are granted to, made by the first, dropped last."""

    def connect(self, database: str | None = None) -> pymysql.connections.Connection:  # type: ignore[type-arg]
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=database,
            autocommit=True,
        )

    def close(self) -> None:
        with self.connect() as connection, connection.cursor() as cursor:
            for name in self.made:
                cursor.execute(f"DROP DATABASE IF EXISTS {name}")
            cursor.execute("DROP USER IF EXISTS %s@'%%'", (self.test_user,))


def external_server() -> ExternalServer | None:
    """The server ``TUITOP_TEST_DB`` names, or None (the tests run a private MariaDB)."""
    url = os.environ.get(SERVER_VARIABLE, "")
    return ExternalServer(url) if url else None


def fresh_database(server: DatabaseServer) -> DatabaseSettings:
    """A new database with Tuleap's queue table, the user granted on it, as settings."""
    name = f"tuleap_{uuid.uuid4().hex[:12]}"
    user = USER
    if isinstance(server, ExternalServer):
        server.made.append(name)
        user = server.test_user
    return create_tuleap_database(server, name, user, PASSWORD)


def connect(settings: DatabaseSettings) -> pymysql.connections.Connection:  # type: ignore[type-arg]
    return pymysql.connect(
        host=settings.host,
        port=settings.port,
        user=settings.user,
        password=settings.password.reveal(),
        database=settings.name,
        autocommit=True,
    )


def enqueue(
    settings: DatabaseSettings, topic: str, payload: Any, now: float | None = None
) -> bytes:
    """Inserts a message as Tuleap's front end does; returns its id."""
    moment = time.time() if now is None else now
    event_id = tuleap_uuid7(moment)
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    with connect(settings) as connection, connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO async_events(id, queue_name, topic, payload, enqueue_timestamp, "
            "enqueue_timestamp_microsecond, nb_added_in_queue) VALUES (%s, %s, %s, %s, %s, %s, 0)",
            (event_id, QUEUE_NAME, topic, text, int(moment), int(moment % 1 * 1e6)),
        )
    return event_id


def count(settings: DatabaseSettings, table: str, where: str = "TRUE") -> int:
    with connect(settings) as connection, connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}")
        return int(cursor.fetchone()[0])


def database_inc(
    directory: Path,
    database: DatabaseSettings,
    *,
    workers: int = 2,
    extra: str = "",
    name: str = "database.inc",
) -> Path:
    """Tuleap's database.inc for ``database``, and the worker settings of local.inc."""
    path = directory / name
    path.write_text(
        "<?php\n"
        f"$sys_dbhost = '{database.host}';\n$sys_dbport = {database.port};\n"
        f"$sys_dbname = '{database.name}';\n$sys_dbuser = '{database.user}';\n"
        f"$sys_dbpasswd = '{database.password.reveal()}';\n"
        f"$sys_nb_backend_workers = {workers};\n$sys_logger_level = 'debug';\n{extra}\n"
    )
    return path


def everything_done(database: DatabaseSettings) -> bool:
    tables = ("async_events", "tuitop_processing", "tuitop_delayed")
    return sum(count(database, table) for table in tables) == 0
