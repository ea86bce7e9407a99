"""The embedded MariaDB server (tuitop.embedded.mariadbserver), with Tuleap's queue table in it:
the ground the database queue (issue 11) stands on, checked against a real server."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pymysql
import pytest

from tuitop.embedded.mariadbserver import EmbeddedMariaDB

# Tuleap's DDL (src/common/Queue/DB/), as its installer creates the table.
ASYNC_EVENTS = """
CREATE TABLE async_events (
    id BINARY(16) NOT NULL PRIMARY KEY,
    queue_name VARCHAR(255) NOT NULL,
    topic VARCHAR(255) NOT NULL,
    payload JSON NOT NULL,
    enqueue_timestamp INT UNSIGNED NOT NULL,
    enqueue_timestamp_microsecond MEDIUMINT UNSIGNED NOT NULL,
    nb_added_in_queue TINYINT UNSIGNED NOT NULL DEFAULT 0,
    INDEX idx_queue_name(queue_name)
) ENGINE=InnoDB
"""
TAKE = (
    "SELECT id, topic, payload, nb_added_in_queue FROM async_events WHERE queue_name = %s "
    "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
)


@pytest.fixture(scope="module")
def mariadb() -> Iterator[EmbeddedMariaDB]:
    server = EmbeddedMariaDB().start()
    try:
        with server.connect() as connection, connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE tuleap")
            cursor.execute("USE tuleap")
            cursor.execute(ASYNC_EVENTS)
        yield server
    finally:
        server.close()


def enqueue(connection: pymysql.connections.Connection, topic: str, payload: object) -> bytes:
    """As Tuleap's front end inserts a message (its id a time-ordered UUID)."""
    now = time.time()
    event_id = uuid.uuid1().bytes
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO async_events VALUES (%s, 'app_user_events', %s, %s, %s, %s, 0)",
            (event_id, topic, json.dumps(payload), int(now), int(now % 1 * 1e6)),
        )
    return event_id


def test_a_row_taken_for_update_is_skipped_by_another_worker_until_it_ends(
    mariadb: EmbeddedMariaDB,
) -> None:
    first, second = mariadb.connect("tuleap"), mariadb.connect("tuleap")
    try:
        with first.cursor() as cursor:
            cursor.execute("DELETE FROM async_events")
        a = enqueue(first, "tuleap.tracker.artifact", {"artifact_id": 1})
        b = enqueue(first, "tuleap.tracker.artifact", {"artifact_id": 2})
        first.begin()
        second.begin()
        with first.cursor() as one, second.cursor() as other:
            one.execute(TAKE, ("app_user_events",))
            other.execute(TAKE, ("app_user_events",))
            taken, skipped_to = one.fetchone(), other.fetchone()
        assert {taken[0], skipped_to[0]} == {a, b}  # never the same row twice
        first.rollback()  # a worker killed mid-job: its row is there again, whole
        second.commit()
        with first.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM async_events")
            assert cursor.fetchone() == (2,)
    finally:
        first.close()
        second.close()


def test_a_killed_server_keeps_what_was_committed(mariadb: EmbeddedMariaDB) -> None:
    with mariadb.connect("tuleap") as connection:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM async_events")
        kept = enqueue(connection, "tuleap.git.hooks.post-receive", {"n": 1})
    mariadb.kill()
    mariadb.start()
    with mariadb.connect("tuleap") as connection, connection.cursor() as cursor:
        cursor.execute("SELECT id FROM async_events")
        assert cursor.fetchall() == ((kept,),)
