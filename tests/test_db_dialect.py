"""MySQL and MariaDB: the SQL chosen by the server's flavour and version, and a connection
the server closes for its silence (tuitop.backends.db.dialect, .connection).

The rendering is checked for every flavour; the statements themselves run on the server of
the run (the private MariaDB, or ``TUITOP_TEST_DB``'s), as every database test does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pymysql
import pytest

from tests.tuleapdb import fresh_database
from tuitop.backends.db.connection import Session, dialect_of
from tuitop.backends.db.dialect import Dialect
from tuitop.config import DatabaseSettings
from tuitop.embedded.mariadbserver import EmbeddedMariaDB

UPSERT = (
    "INSERT INTO t (a, b) VALUES (%s, %s) ON DUPLICATE KEY UPDATE "
    "b = IF(b = tuitop_new.a, tuitop_new.b, b)"
)


@pytest.mark.parametrize(
    ("handshake", "flavour", "version"),
    [
        ("8.4.3", "mysql", (8, 4, 3)),
        ("8.0.36-28", "mysql", (8, 0, 36)),
        ("8.0.18", "mysql", (8, 0, 18)),
        ("10.11.6-MariaDB-0+deb12u1", "mariadb", (10, 11, 6)),
        ("5.5.5-10.6.18-MariaDB-log", "mariadb", (10, 6, 18)),
        ("11.4.2-MariaDB", "mariadb", (11, 4, 2)),
    ],
)
def test_the_flavour_and_version_are_read_from_the_handshake(
    handshake: str, flavour: str, version: tuple[int, int, int]
) -> None:
    assert Dialect.of(handshake) == Dialect(flavour, version)


def test_an_upsert_names_the_new_row_as_each_server_reads_it() -> None:
    # MySQL from 8.0.19: a row alias (VALUES() there is deprecated from 8.0.20).
    assert Dialect.of("8.4.3").upsert(UPSERT) == (
        "INSERT INTO t (a, b) VALUES (%s, %s) AS tuitop_new ON DUPLICATE KEY UPDATE "
        "b = IF(b = tuitop_new.a, tuitop_new.b, b)"
    )
    # MariaDB has no row alias; MySQL before 8.0.19 neither.
    for handshake in ("10.11.6-MariaDB", "8.0.18"):
        assert Dialect.of(handshake).upsert(UPSERT) == (
            "INSERT INTO t (a, b) VALUES (%s, %s) ON DUPLICATE KEY UPDATE "
            "b = IF(b = VALUES(a), VALUES(b), b)"
        )
    with pytest.raises(ValueError):
        Dialect.of("8.4.3").upsert("INSERT INTO t (a) VALUES (1)")


def test_what_ends_a_silent_transaction_is_chosen_by_flavour() -> None:
    assert Dialect.of("10.11.6-MariaDB").ends_idle_transactions
    assert not Dialect.of("8.4.3").ends_idle_transactions


def test_a_session_knows_its_server_and_sets_what_guards_a_silent_transaction(
    database: DatabaseSettings,
) -> None:
    session = Session(database, program="tuitop:test")
    with pymysql.connect(
        host=database.host,
        port=database.port,
        user=database.user,
        password=database.password.reveal(),
    ) as other:
        expected = dialect_of(other)  # type: ignore[arg-type]
    assert session.dialect == expected

    def variables(cursor: pymysql.cursors.Cursor) -> tuple[float, float | None]:
        cursor.execute("SELECT @@SESSION.wait_timeout")
        (wait,) = cursor.fetchone() or (0,)
        idle = None
        if expected.ends_idle_transactions:
            cursor.execute("SELECT @@SESSION.idle_transaction_timeout")
            (idle,) = cursor.fetchone() or (0,)
        return float(wait), None if idle is None else float(idle)

    wait, idle = session.run(variables)
    if expected.ends_idle_transactions:
        assert idle == 10
    else:
        assert wait == 10  # MySQL: the server closes a connection silent that long
    session.close()


def test_a_connection_the_server_closed_for_its_silence_is_made_anew_without_an_error(
    mariadb_factory: Callable[[], EmbeddedMariaDB],
) -> None:
    """A job longer than the server's ``wait_timeout``: the worker's connection was
    closed meanwhile; its next statement must not fail (the log would say the database
    was unreachable, then back)."""
    server = mariadb_factory()
    with server.connect() as admin, admin.cursor() as cursor:
        cursor.execute("SET GLOBAL wait_timeout = 2")
    database = fresh_database(server)
    session = Session(database, program="tuitop:test")
    first = session.run(
        lambda cursor: cursor.execute("SELECT CONNECTION_ID()") and cursor.fetchone()
    )
    time.sleep(3.5)  # the server closed it after 2 s
    second = session.run(
        lambda cursor: cursor.execute("SELECT CONNECTION_ID()") and cursor.fetchone()
    )
    assert first != second  # a new connection, made before the statement was sent
    session.close()


def test_a_session_used_within_the_servers_patience_keeps_its_connection(
    database: DatabaseSettings,
) -> None:
    session = Session(database, program="tuitop:test")
    ids = [
        session.run(lambda cursor: cursor.execute("SELECT CONNECTION_ID()") and cursor.fetchone())
        for _ in range(3)
    ]
    assert ids[0] == ids[1] == ids[2]
    session.close()
