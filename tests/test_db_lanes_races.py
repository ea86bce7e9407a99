"""Lanes on the database (each a ``queue_name`` of Tuleap's table) against frozen and
slow clients, forgotten lanes, a link that flaps, refused rows: each test failed before
its fix (found by the second reader of the lanes' work).
Real MariaDB, real tuitop code; the only helper is a TCP proxy that delays one request (a
frozen or slow client), and plain connections that write hostile rows."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import threading
import time

import pymysql
import pytest

from tests.tuleapdb import connect, count, enqueue
from tuitop.backends.base import RetryPolicy
from tuitop.backends.db.lanes import TakePlan
from tuitop.backends.db.pool import DbPoolStore
from tuitop.backends.db.queue import DbQueue
from tuitop.backends.db.schema import create_tables
from tuitop.backends.db.snapshot import take_db_snapshot
from tuitop.beats import PoolBeat
from tuitop.config import DatabaseSettings
from tuitop.lanes import DEFAULT_LANE, LaneSet
from tuitop.stats import StatsBatch

JIRA = "tuleap.tracker.creation.jira"
LANE = "latency_15m"
LANES = LaneSet.parse(f"{LANE}(1): {JIRA}")
ROUTER = TakePlan(LANES, (DEFAULT_LANE,))  # a default-lane worker: routes JIRA to the lane


class DelayingProxy:
    """Forwards every byte both ways; the next client packet holding ``marker`` is held
    ``seconds`` before it goes on (the connection is kept: a slow or frozen client)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._delay: tuple[bytes, float] | None = None
        self._lock = threading.Lock()
        self.held = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def delay(self, marker: bytes, seconds: float) -> None:
        with self._lock:
            self._delay = (marker, seconds)
            self.held.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if upstream:
                    wait = 0.0
                    with self._lock:
                        if self._delay is not None and self._delay[0] in data:
                            wait, self._delay = self._delay[1], None
                    if wait:
                        self.held.set()
                        time.sleep(wait)
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.close()

    def close(self) -> None:
        self._listener.close()


def via(proxy: DelayingProxy, database: DatabaseSettings) -> DatabaseSettings:
    return dataclasses.replace(database, host="127.0.0.1", port=proxy.port)


@pytest.fixture
def queue(database: DatabaseSettings) -> DbQueue:
    queue = DbQueue(database, RetryPolicy(base_delay=0.2))
    queue.session.run(create_tables)
    return queue


def lane_rows(database: DatabaseSettings) -> int:
    return count(database, "async_events", f"queue_name = 'app_user_events-lane-{LANE}'")


def test_a_worker_frozen_mid_routing_take_stalls_every_router_and_fails_the_pools_link(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    """README: a transaction left waiting by its client (a worker frozen mid-move) is
    ended by MariaDB within 10 s "and its rows are free again". A routing take held,
    besides its rows, the lane's tuitop_lanes row and the single tuitop_bell row until it
    committed: for those 10 s every other routing take waited, and a pool's publish /
    move_due hit the pool's 2 s lock wait (1205), taken for the database being away. Now
    no row every take or pool needs is locked inside a move's transaction."""
    proxy = DelayingProxy(database.port)
    frozen = DbQueue(via(proxy, database), RetryPolicy(), read_timeout=30)
    now = time.time()
    enqueue(database, JIRA, {"n": 1}, now=now - 2)
    enqueue(database, "tuleap.tracker.artifact", {"n": 2}, now=now - 1)
    # Its second round trip (the move into its hands) is held: frozen after routing.
    proxy.delay(b"INSERT INTO tuitop_processing", 12.0)
    threading.Thread(
        target=_quiet, args=(frozen.take, "host-z/0#1", 8, ROUTER), daemon=True
    ).start()
    assert proxy.held.wait(5)
    started = time.monotonic()

    store = DbPoolStore(database, pool_name="p", retry=RetryPolicy(), socket_timeout=3)
    store.ping()
    store.publish("p", PoolBeat(served=(LANE,)), 10, {LANE}, False)  # not held up

    with connect(database) as connection, connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO tuitop_delayed SELECT id, 'app_user_events', 't', '{}', 1, 0, 1, 0 "
            "FROM (SELECT UNHEX(REPLACE(UUID(), '-', '')) AS id) AS fresh"
        )
    assert store.move_due() == 1  # not held up either

    enqueue(database, JIRA, {"n": 3})
    enqueue(database, "tuleap.tracker.artifact", {"n": 4})
    before = time.monotonic()
    taken, _, _ = queue.take("host-a/0#2", 8, ROUTER)  # another pool's default worker
    waited = time.monotonic() - before
    print(f"frozen for {time.monotonic() - started:.1f} s; the other take waited {waited:.1f} s")
    assert {"n": 4} in [m.payload for m in taken]  # (the retry moved back is taken too)
    assert waited < 1.0, f"a healthy worker's take waited {waited:.1f} s behind a frozen one"


def _quiet(function, *args):  # type: ignore[no-untyped-def]
    with contextlib.suppress(Exception):
        function(*args)


def test_a_row_routed_while_its_empty_lane_is_forgotten_is_stranded_unlisted(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    """unserved_lanes_back: a stale lane's move back finds 0 rows, then _forget_lane
    deletes its tuitop_lanes row in a second statement. A route to that lane committed in
    between (its INSERT IGNORE finds the row there: no change) leaves a row in the lane's
    queue_name that no list names: unserved_lanes_back never looks at it again, the
    snapshot and the depth do not count it; only a pool's link coming up
    (list_forgotten_lanes) or another message routed there finds it."""
    enqueue(database, JIRA, {"n": 0})
    queue.take("host-a/0#1", 8, ROUTER)  # lists the lane
    queue.move_lane_back(LANE)
    queue.take("host-a/0#1", 8, TakePlan(LANES, (LANE, DEFAULT_LANE)))
    queue.ack("host-a/0#1", queue.held("host-a/0#1"), StatsBatch())
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("UPDATE tuitop_lanes SET served_at = 0")  # no pool serves it now
    assert lane_rows(database) == 0 and count(database, "tuitop_lanes") == 1

    proxy = DelayingProxy(database.port)
    store = DbPoolStore(via(proxy, database), pool_name="p", retry=RetryPolicy(), socket_timeout=3)
    store.ping()
    proxy.delay(b"DELETE FROM tuitop_lanes", 1.0)  # the pool's loop a moment slower
    result: list[dict[str, int]] = []
    scan = threading.Thread(target=lambda: result.append(store.unserved_lanes_back(10)))
    scan.start()
    assert proxy.held.wait(5)
    enqueue(database, JIRA, {"n": 1})
    queue.take("host-b/0#1", 8, ROUTER)  # a worker whose pool still routes to the lane
    scan.join()
    assert result == [{}]
    # README: "a lane no pool serves any more goes back to app_user_events within ~15 s".
    for _ in range(3):
        store.unserved_lanes_back(0)
    snapshot = queue.session.run(lambda cursor: take_db_snapshot(cursor, LaneSet(), time.time()))
    shown = sum(lane.waiting for lane in snapshot.lanes)
    assert lane_rows(database) == 0, (
        f"stranded in the lane, unlisted (tuitop_lanes rows: {count(database, 'tuitop_lanes')}"
        f"; the snapshot counts {shown} waiting)"
    )
    proxy.close()


def test_a_tuitop_lanes_row_naming_the_default_lane_rewrites_tuleaps_queue_every_scan(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    """A hostile/hand-written tuitop_lanes row ('latency_10s', served_at 0): every scan
    "moves back" the 1000 oldest rows of app_user_events onto themselves (FOUND_ROWS
    counts them), locks them, rings every pool's bell, logs a warning, and never forgets
    the row (the count is never 0 while anything waits)."""
    for n in range(5):
        enqueue(database, "tuleap.tracker.artifact", {"n": n})
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("INSERT INTO tuitop_lanes (lane, served_at) VALUES ('latency_10s', 0)")
        cursor.execute("SELECT bell FROM tuitop_bell")
        (bell,) = cursor.fetchone()
    store = DbPoolStore(database, pool_name="p", retry=RetryPolicy(), socket_timeout=3)
    for _ in range(3):
        assert store.unserved_lanes_back(10) == {}, "moved Tuleap's queue onto itself"
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT bell FROM tuitop_bell")
        assert cursor.fetchone()[0] == bell, "rang the bell for nothing"


@pytest.mark.parametrize("flap_every", [0, 4])
def test_a_link_that_flaps_faster_than_the_heartbeat_ttl_never_recovers_a_dead_worker(
    queue: DbQueue, database: DatabaseSettings, flap_every: int
) -> None:
    """recovery.py: silent workers are not recovered while monotonic() - link.up_since <
    heartbeat_ttl, and StoreLink.up() resets up_since at every come-back. A pool whose link
    fails once every < 10 s (any statement error: a 1205 as above, a 3 s read timeout, a
    lost connection) never recovers a worker that is really dead: its message stays in
    tuitop_processing for ever. Here the arbiter's calls, a failure every 4 s."""
    from tuitop.pool.link import StoreLink
    from tuitop.pool.recovery import Recovery

    enqueue(database, "tuleap.tracker.artifact", {"n": 1})
    queue.register("dead-host/0#9", "dead-host", {}, ttl=-30.0)  # long dead
    assert len(queue.take("dead-host/0#9", 8)[0]) == 1
    logger = logging.getLogger("review")
    link = StoreLink("p", RetryPolicy(), logger)
    recovery = Recovery(link, heartbeat_ttl=10.0, tuleap_hold_limit=960.0, logger=logger)
    link.open(database)
    link.up()
    deadline = time.monotonic() + 24
    while time.monotonic() < deadline:
        recovery.scan(set(), force=True)
        time.sleep(1)
        if flap_every and int(deadline - time.monotonic()) % flap_every == 0:  # a flap
            link.failed(pymysql.err.OperationalError(2013, "Lost connection"))
            link.open(database)
            link.up()
    assert count(database, "tuitop_processing") == 0, "a dead worker's message is still held"


def test_one_retry_tuleaps_table_refuses_takes_the_pool_off_its_database_for_good(
    tmp_path,
    pools,
    database: DatabaseSettings,  # type: ignore[no-untyped-def]
) -> None:
    """A retry whose payload Tuleap's ``CHECK (json_valid(payload))`` refuses (here JSON
    nested 32 deep: MariaDB's JSON_VALID says 0; a --handlers module's RetryLater(payload=)
    can write one into tuitop_delayed, which has no CHECK) makes move_due's single
    INSERT ... SELECT fail (4025) at every tick. The first review fixed this for a
    duplicate id only: the arbiter still takes the error for the database being away
    (link.failed), so no due retry ever comes back, the doorbell is off, and with
    up_since reset at every come-back a really dead worker is never recovered."""
    from tests.pool import Pool
    from tests.tuleapdb import database_inc

    queue = DbQueue(database, RetryPolicy())
    queue.session.run(create_tables)
    config = database_inc(tmp_path, database, workers=1)
    pool = Pool(tmp_path, config, "--grace", "1")
    pools.append(pool.start())
    pool.wait_for_log(r"Start service")
    enqueue(database, "tuleap.tracker.artifact", {"n": "held by a dead worker"})
    queue.register("gone-host/0#1", "gone-host", {}, ttl=-60.0)
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("UPDATE async_events SET queue_name = 'parked'")  # keep it from the pool
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("UPDATE async_events SET queue_name = 'app_user_events'")
    queue.take("gone-host/0#1", 8)
    # in case the pool's worker took it first, hand it to the dead worker anyway
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("UPDATE tuitop_processing SET worker_id = 'gone-host/0#1'")
        deep = "[" * 32 + "]" * 32
        for n, payload in enumerate((deep, '{"n":"a good retry"}')):
            cursor.execute(
                "INSERT INTO tuitop_delayed VALUES (%s, 'app_user_events', 'unknown.topic', %s, "
                "1, 0, 1, 0)",
                (bytes([n]) * 16, payload),
            )
    time.sleep(30)
    log = pool.log()
    print(
        "\n".join(line for line in log.splitlines() if "4025" in line or "Recovered" in line)[:1200]
    )
    assert count(database, "tuitop_processing", "worker_id = 'gone-host/0#1'") == 0, (
        "a dead worker's message still held after 30 s"
    )
    assert count(database, "tuitop_delayed", "payload LIKE '%good retry%'") == 0, (
        "a good due retry stuck behind the refused one"
    )


def test_a_big_unserved_lane_is_not_back_within_15_s(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    """README: "a lane no pool serves any more goes back to app_user_events within ~15 s".
    unserved_lanes_back moves 1000 rows a lane a call, one call a 5 s scan: the 50,000-row
    backlog lanes exist for takes 250 s per pool (a pool's own release moves all at once)."""
    now = time.time()
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO async_events VALUES (UNHEX(REPLACE(UUID(), '-', '')), "
            f"'app_user_events-lane-{LANE}', %s, '{{}}', %s, 0, 0)",
            [(JIRA, int(now))] * 5000,
        )
        cursor.execute(f"INSERT INTO tuitop_lanes VALUES ('{LANE}', 0)")
    store = DbPoolStore(database, pool_name="p", retry=RetryPolicy(), socket_timeout=3)
    for _ in range(3):  # the scans of 15 s
        store.unserved_lanes_back(10)
    assert lane_rows(database) == 0, f"{lane_rows(database)} of 5000 still in the lane after 15 s"
