"""How many connections a pool holds to the forge's database: at most one a worker and one
for the pool (its loop, its doorbell and its ``/metrics`` share it), counted on the server
while jobs run, workers idle and Prometheus scrapes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pool import Pool, free_port, run_tuitop, scrape, wait_until
from tests.tuleap import Tuleap, start_db_pool
from tests.tuleapdb import ExternalServer, connect, database_inc, enqueue
from tuitop.config import DatabaseSettings
from tuitop.embedded.mariadbserver import DatabaseServer, create_tuleap_database


@pytest.fixture
def tuleap(tmp_path: Path) -> Tuleap:
    return Tuleap(tmp_path)


def connections(database: DatabaseSettings) -> int:
    """The connections open on ``database`` (this one's left out), as the server counts
    them against its ``max_connections``."""
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
            "WHERE DB = %s AND ID <> CONNECTION_ID()",
            (database.name,),
        )
        return int(cursor.fetchone()[0])


def test_a_pool_of_w_workers_holds_at_most_w_plus_one_connections(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, database: DatabaseSettings
) -> None:
    workers = 3
    port = free_port()
    config = database_inc(tmp_path, database, workers=workers)
    start_db_pool(pools, tmp_path, tuleap, config, "--metrics-port", str(port), "--grace", "1")
    for i in range(2):
        enqueue(database, "tuleap.tracker.artifact", {"id": f"long{i}", "standin": {"sleep": 4}})
    wait_until(lambda: len(tuleap.runs_of("long0") + tuleap.runs_of("long1")) == 2, 20, "busy")
    seen = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        scrape(port)  # the store-wide series read the database too
        enqueue(database, "tuleap.tracker.artifact", {"id": f"short{len(seen)}"})
        seen.append(connections(database))
        time.sleep(0.1)
    assert max(seen) <= workers + 1, seen
    assert min(seen) >= workers  # every worker is connected: the count is no accident


@pytest.fixture
def limited_database(database_server: DatabaseServer) -> Iterator[DatabaseSettings]:
    """A database of Tuleap's whose account has a connection limit of its own
    (``max_user_connections``: set with :func:`limit`); the account dropped after."""
    user = f"tuleap_{uuid.uuid4().hex[:8]}"
    name = f"tuleap_{uuid.uuid4().hex[:12]}"
    if isinstance(database_server, ExternalServer):
        database_server.made.append(name)
    settings = create_tuleap_database(database_server, name, user, "limited-password")
    yield settings
    with database_server.connect() as connection, connection.cursor() as cursor:
        cursor.execute("DROP USER IF EXISTS %s@'%%'", (user,))


def limit(server: DatabaseServer, settings: DatabaseSettings, connections: int) -> None:
    with server.connect() as connection, connection.cursor() as cursor:
        cursor.execute(
            f"ALTER USER %s@'%%' WITH MAX_USER_CONNECTIONS {int(connections)}", (settings.user,)
        )


def check(config: Path) -> tuple[int, str, list[str]]:
    done = run_tuitop("--config", str(config), "check")
    first, *details = done.stdout.splitlines()
    return done.returncode, first, details


def test_check_warns_when_the_database_leaves_too_little_room(
    tmp_path: Path,
    pools: list[Pool],
    tuleap: Tuleap,
    database_server: DatabaseServer,
    limited_database: DatabaseSettings,
) -> None:
    database = limited_database
    # No pool runs yet: one of 4 workers would take 5, and the front ends need 10.
    limit(database_server, database, 12)
    config = database_inc(tmp_path, database, workers=4)
    code, _, details = check(config)
    [line] = [d for d in details if "max_user_connections" in d]
    assert line.startswith("WARNING: the database's max_user_connections (12) leaves room for 12")
    assert "a pool of 4 worker(s) starting take 5" in line
    # Room enough: the pool starts, and the check says how many are in use.
    limit(database_server, database, 40)
    config = database_inc(tmp_path, database, workers=2)
    start_db_pool(pools, tmp_path, tuleap, config)
    wait_until(lambda: check(config)[0] == 0, 20, "an OK")
    assert any(d.startswith("OK: ") and "connections in use" in d for d in check(config)[2])
    # The pool (3 connections) runs; the account's limit drops to 12: 9 left, under 10.
    limit(database_server, database, 12)
    code, first, details = check(config)
    assert code == 1, first
    [line] = [d for d in details if "max_user_connections" in d]
    assert "(12) leaves room for 9 more connection(s) (3 in use)" in line, line
    assert "the workers the pools still want take 0" in line
