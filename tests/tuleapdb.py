"""Tuleap's database queue for the tests: a fresh database on a private MariaDB server,
Tuleap's ``async_events`` in it (its DDL), and inserts made the way Tuleap's front end
makes them (``DBPersistentQueueDAO::saveMessage``)."""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import pymysql

from tuitop.backends.db.schema import QUEUE_NAME
from tuitop.config import DatabaseSettings
from tuitop.mariadbserver import EmbeddedMariaDB, create_tuleap_database

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


def fresh_database(server: EmbeddedMariaDB) -> DatabaseSettings:
    """A new database with Tuleap's queue table, the user granted on it, as settings."""
    return create_tuleap_database(server, f"tuleap_{uuid.uuid4().hex[:12]}", USER, PASSWORD)


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
