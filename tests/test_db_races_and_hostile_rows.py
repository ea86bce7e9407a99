"""The database queue against races (a recovery and a take, a give-back and a recovery,
two pools across an outage) and hostile rows (colliding ids, garbage in tuitop's tables,
rows of other queues): each test states a promise of the README or a docstring, and
failed before its fix (found by the second reader of issue 11). Real MariaDB, real tuitop code,
no mocks: extra plain connections only widen timing windows or write hostile rows."""

from __future__ import annotations

import threading
import time

import pymysql
import pytest

from tests.tuleapdb import connect, count, enqueue
from tuitop.backends.base import RetryPolicy
from tuitop.backends.db.queue import DbQueue
from tuitop.backends.db.schema import create_tables
from tuitop.config import DatabaseSettings

FROZEN = "host-a/0#100"
PLACES = ("async_events", "tuitop_processing", "tuitop_delayed", "tuitop_dead_letters")


@pytest.fixture
def queue(database: DatabaseSettings) -> DbQueue:
    queue = DbQueue(database, RetryPolicy(base_delay=0.2))
    queue.session.run(create_tables)
    return queue


def places_of(database: DatabaseSettings, row_id: bytes) -> list[str]:
    found = []
    with connect(database) as connection, connection.cursor() as cursor:
        for table in PLACES:
            cursor.execute(f"SELECT COUNT(*) FROM {table} WHERE id = %s", (row_id,))
            found += [table] * int(cursor.fetchone()[0])
    return found


def test_recovery_racing_a_take_of_the_recovered_worker_loses_nothing(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    """A worker frozen past its heartbeat (SIGSTOP, a paused VM) is recovered by another
    pool (``recover(..., unless_beating=True)``); it thaws and takes a new row while the
    recovery's transaction runs. In READ COMMITTED the recovery's ``SELECT ... WHERE
    worker_id = ? FOR UPDATE`` takes no gap lock, so the take commits a new row for that
    worker, and the recovery's ``DELETE FROM tuitop_processing WHERE worker_id = ?``
    deletes it with the rest, never having rescheduled it: the message is nowhere.

    The third connection below only holds the recovery's first INSERT for a moment (a
    slow server): the interleaving is the one a thaw can meet in a round trip."""
    queue.register(FROZEN, "host-a", {}, ttl=-1.0)  # its heartbeat expired
    first = enqueue(database, "t", {"n": 1})
    [held] = queue.take(FROZEN, 1)[0]
    assert held.row_id == first

    blocker = connect(database)
    with blocker.cursor() as cursor:
        cursor.execute("START TRANSACTION")
        cursor.execute(
            "INSERT INTO tuitop_delayed (id, queue_name, topic, payload, enqueue_timestamp, "
            "enqueue_timestamp_microsecond, nb_added_in_queue, due_at) "
            "VALUES (%s, 'x', 'x', '{}', 0, 0, 0, 0)",
            (first,),
        )
    recoverer = DbQueue(database, RetryPolicy(base_delay=0.2))
    result: list[object] = []
    thread = threading.Thread(
        target=lambda: result.append(
            recoverer.recover(FROZEN, "stopped beating", unless_beating=True)
        )
    )
    thread.start()
    time.sleep(0.5)  # the recovery has read what FROZEN holds, and waits on its INSERT

    second = enqueue(database, "t", {"n": 2})
    taken, _, _ = queue.take(FROZEN, 1)  # the thawed worker takes again
    assert [m.row_id for m in taken] == [second]

    with blocker.cursor() as cursor:
        cursor.execute("ROLLBACK")
    blocker.close()
    thread.join(30)
    assert result and not isinstance(result[0], BaseException)

    assert places_of(database, first) == ["tuitop_delayed"]
    # The promise: the second message is in exactly one place (FROZEN's hands, where it
    # would be given back, or anywhere else) -- here it is nowhere: lost.
    assert len(places_of(database, second)) == 1, "the message taken during the recovery is lost"


def _hold_recovery(database: DatabaseSettings, row_id: bytes) -> pymysql.connections.Connection:
    """A connection whose open insert of ``row_id`` into tuitop_delayed makes a recovery
    of that row wait right after its ``SELECT ... FOR UPDATE`` (a slow server)."""
    blocker = connect(database)
    with blocker.cursor() as cursor:
        cursor.execute("START TRANSACTION")
        cursor.execute(
            "INSERT INTO tuitop_delayed (id, queue_name, topic, payload, enqueue_timestamp, "
            "enqueue_timestamp_microsecond, nb_added_in_queue, due_at) "
            "VALUES (%s, 'x', 'x', '{}', 0, 0, 0, 0)",
            (row_id,),
        )
    return blocker


def test_a_give_back_racing_a_recovery_leaves_the_message_in_one_place(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    """A worker gives back what it took and did not start (a warm stop, ``_settle`` after
    the database came back, the watchdog's tail) while another pool recovers it (its
    heartbeat expired: a freeze, or a MariaDB restart longer than 10 s with two pools).
    give_back's ``INSERT INTO async_events SELECT ... FROM tuitop_processing`` is a
    non-locking read in READ COMMITTED: it copies the row the recovery has locked, its
    DELETE then waits, finds nothing, and commits -- the message is now both waiting in
    async_events and a retry in tuitop_delayed: it runs twice, or (taken later) its retry's
    move_due hits a duplicate key (see the collision tests)."""
    queue.register(FROZEN, "host-a", {}, ttl=-1.0)
    row_id = enqueue(database, "t", {"n": 1})
    [held] = queue.take(FROZEN, 1)[0]
    blocker = _hold_recovery(database, row_id)
    recoverer = DbQueue(database, RetryPolicy(base_delay=0.2))
    recovery = threading.Thread(
        target=lambda: recoverer.recover(FROZEN, "stopped beating", unless_beating=True)
    )
    recovery.start()
    time.sleep(0.5)
    giver = DbQueue(database)
    give_back = threading.Thread(target=lambda: giver.give_back(FROZEN, [held]))
    give_back.start()
    time.sleep(0.5)
    with blocker.cursor() as cursor:
        cursor.execute("ROLLBACK")
    blocker.close()
    recovery.join(30)
    give_back.join(30)
    assert len(places_of(database, row_id)) == 1, places_of(database, row_id)


def _hostile_copy(database: DatabaseSettings, row_id: bytes, topic: str = "hostile") -> None:
    """A row of Tuleap's table carrying an id tuitop already holds elsewhere (a restored
    dump, a hand-made insert, Tuleap's own worker putting a row back...)."""
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO async_events (id, queue_name, topic, payload, enqueue_timestamp, "
            "enqueue_timestamp_microsecond, nb_added_in_queue) "
            "VALUES (%s, 'app_user_events', %s, '{}', 1, 0, 0)",
            (row_id, topic),
        )


def test_one_retry_whose_id_collides_does_not_hold_every_other_retry_back(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    """``move_due`` moves up to 1000 due retries in one INSERT ... SELECT: one of them whose
    id is already in async_events fails the whole statement with a duplicate key, at every
    call -- no due retry ever comes back, and the pool's loop (arbiter._cycle_once) takes the
    IntegrityError for the database being away (link.failed: no recovery, no doorbell)."""
    now = time.time()
    ids = [enqueue(database, "t", {"n": n}, now=now + n / 100) for n in range(3)]
    taken, _, _ = queue.take(FROZEN, 3)
    for message in taken:
        assert queue.fail(FROZEN, message, "boom") == "retried"
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("UPDATE tuitop_delayed SET due_at = 0")
    _hostile_copy(database, ids[0])

    try:
        moved = queue.move_due()
    except pymysql.MySQLError as error:
        pytest.fail(f"move_due raised {error!r}: every due retry is stuck behind one row")
    assert moved == 3 and count(database, "tuitop_delayed") == 0
    # Each back in Tuleap's table (under a new id, taken next: backends/db/placement.py),
    # beside the hostile copy (no id collides any more).
    assert count(database, "async_events", "topic = 't'") == 3


def test_one_waiting_row_whose_id_collides_does_not_stop_every_take(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    """The oldest row of async_events has the id of a row in tuitop_processing: each
    take's INSERT INTO tuitop_processing fails with a duplicate key; every worker backs
    off and tries again forever on that same oldest row: the whole queue stops."""
    held = enqueue(database, "t", {"n": 0}, now=time.time() - 60)
    queue.take(FROZEN, 1)
    _hostile_copy(database, held)  # the oldest waiting row now
    behind = enqueue(database, "t", {"n": 1})
    try:
        taken, _, _ = queue.take("host-b/0#200", 1)
    except pymysql.MySQLError as error:
        pytest.fail(f"take raised {error!r}: no worker can take anything any more")
    assert taken, "the rows behind the colliding one must still be served"
    assert behind in [m.row_id for m in taken] or places_of(database, behind)


# --- end to end: the real pool ---------------------------------------------------------

from pathlib import Path  # noqa: E402

from tests.pool import Pool, wait_until  # noqa: E402
from tests.tuleap import Tuleap, start_db_pool  # noqa: E402
from tests.tuleapdb import database_inc  # noqa: E402


@pytest.fixture
def tuleap(tmp_path: Path) -> Tuleap:
    return Tuleap(tmp_path)


def test_a_row_of_another_queue_sharing_an_id_does_not_take_the_pool_off_its_database(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, database: DatabaseSettings
) -> None:
    """A retry waits in tuitop_delayed; a row of *another* queue_name (which tuitop never
    takes) has its id in async_events. The pool's move_due fails at every turn with a
    duplicate key, and the pool reports the database as unreachable-ish and backs off
    (link.failed): no recovery scan, no doorbell, no due retry, for ever."""
    pool = start_db_pool(
        pools, tmp_path, tuleap, database_inc(tmp_path, database, workers=1),
        "--retry-delay", "3", "--grace", "1",
    )  # fmt: skip
    enqueue(database, "tuleap.git.hooks.post-receive", {"id": "bad", "standin": {"exit": 3}})
    wait_until(lambda: count(database, "tuitop_delayed") == 1, 30, "a retry waiting")
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT id FROM tuitop_delayed")
        (row_id,) = cursor.fetchone()
        cursor.execute(
            "INSERT INTO async_events (id, queue_name, topic, payload, enqueue_timestamp, "
            "enqueue_timestamp_microsecond, nb_added_in_queue) "
            "VALUES (%s, 'some_other_queue', 't', '{}', 1, 0, 0)",
            (row_id,),
        )
    time.sleep(12)
    log = pool.log()
    assert "Duplicate entry" not in log and "IntegrityError" not in log, (
        "the pool took one odd row for its database being away:\n"
        + "\n".join(line for line in log.splitlines() if "Duplicate" in line)[:1500]
    )


def test_two_pools_across_a_mariadb_outage_longer_than_the_heartbeat_run_each_once(
    tmp_path: Path,
    pools: list[Pool],
    tuleap: Tuleap,
    mariadb_factory,  # type: ignore[no-untyped-def]
) -> None:
    """README "Several hosts, one queue" with the database queue: two pools, MariaDB
    killed (-9) mid-run and back after 15 s. Every worker's heartbeat row expired by the
    database's clock meanwhile, so at its return each pool recovers the *live* workers of
    the other one (``silent_workers``) while those reconnect, give back and ack: messages
    are run twice (no worker was killed or frozen), and the recovery/give-back races above
    can lose or duplicate them."""
    from tests.tuleapdb import everything_done, fresh_database

    server = mariadb_factory()
    database = fresh_database(server)
    for name in ("a", "b"):
        directory = tmp_path / name
        directory.mkdir()
        config = database_inc(directory, database, workers=2)
        start_db_pool(pools, directory, tuleap, config, "--pool-name", name,
                   "--retry-delay", "0.05", "--grace", "1")  # fmt: skip
    ids = [f"m{i}" for i in range(60)]
    for message_id in ids:
        enqueue(database, "tuleap.fts.index-item", {"id": message_id, "standin": {"sleep": 0.4}})
    wait_until(lambda: len(tuleap.runs("end")) >= 8, 60, "some done")
    server.kill()
    time.sleep(15)
    server.start()
    wait_until(lambda: everything_done(database), 180, "every row done after the outage")
    time.sleep(2)
    ended = [str(run["id"]) for run in tuleap.runs("end") if run["status"] == 0]
    started = [str(run["id"]) for run in tuleap.runs("start")]
    lost = sorted(set(ids) - set(ended))
    twice = sorted({i for i in started if started.count(i) > 1})
    logs = "\n".join(p.log() for p in pools)
    recovered = [line for line in logs.splitlines() if "Recovered" in line]
    assert not lost, f"lost: {lost}"
    assert count(database, "tuitop_dead_letters") == 0
    assert not twice, f"run twice: {twice}; recoveries:\n" + "\n".join(recovered)


ODD_ROWS = [
    ("", "{}", 0),
    ("x" * 255, "{}", 0),
    ("\U0001f600" * 255, "{}", 0),
    ("a%b_c\\d\nnewline", "{}", 0),
    ("t.string", '"just a string"', 0),
    ("t.array", "[1,2,3]", 0),
    ("t.deep", "[" * 30 + "]" * 30, 0),
    ("t.surrogate", '{"a":"\\ud800"}', 0),
    ("t.bignum", '{"a":1e400}', 0),
    ("t.tries", "{}", 255),
    ("t.huge", '{"blob":"' + "y" * 4_000_000 + '"}', 0),
]


def _insert_odd_rows(database: DatabaseSettings) -> int:
    """Inserts the odd rows MariaDB accepts (its JSON check refuses some); how many."""
    accepted = 0
    with connect(database) as connection, connection.cursor() as cursor:
        for n, (topic, payload, tries) in enumerate(ODD_ROWS):
            try:
                cursor.execute(
                    "INSERT INTO async_events (id, queue_name, topic, payload, "
                    "enqueue_timestamp, enqueue_timestamp_microsecond, nb_added_in_queue) "
                    "VALUES (%s, 'app_user_events', %s, %s, %s, 0, %s)",
                    (uuid_for(n), topic, payload, int(time.time()), tries),
                )
                accepted += 1
            except pymysql.MySQLError as error:
                print("refused by MariaDB:", topic[:20], payload[:30], error)
        cursor.execute(
            "INSERT INTO async_events (id, queue_name, topic, payload, enqueue_timestamp, "
            "enqueue_timestamp_microsecond, nb_added_in_queue) "
            "VALUES (%s, 'some_other_queue', 't', '{}', 1, 0, 0)",
            (uuid_for(99),),
        )
    return accepted


def uuid_for(n: int) -> bytes:
    from tests.tuleapdb import tuleap_uuid7

    return tuleap_uuid7(time.time() - 100 + n / 1000)


def _garbage_in_tuitops_tables(database: DatabaseSettings) -> None:
    far = time.time() + 3600
    with connect(database) as connection, connection.cursor() as cursor:
        for n, beat in enumerate(
            ["not json", "[1,2]", '"s"', "{" * 5000, '{"state":"busy","since":1e308,'
             '"job_started":-1e308,"pid":-7,"rss":1e308,"cpu":-5,"processed":1e300,'
             '"max_messages":0,"slot":"x","serves":7,"topic":{"a":1}}', ""]
        ):  # fmt: skip
            cursor.execute(
                "INSERT INTO tuitop_workers (id, pool, expires_at, beat) "
                "VALUES (%s, 'evil', %s, %s)",
                (f"evil/{n}#{'x' * n}", far, beat),
            )
            cursor.execute(
                "INSERT INTO tuitop_pools (name, owner, claimed_until, expires_at, beat) "
                "VALUES (%s, 'x', 0, %s, %s)",
                (f"evil{n}", far, beat),
            )
        cursor.execute(
            "INSERT INTO tuitop_pools (name, owner, claimed_until, expires_at, beat) VALUES "
            "('evil-num', 'x', 0, %s, %s)",
            (far, '{"wanted":1e308,"running":-3,"beat":1e308,"loaded_at":-1e308,"host":5,'
                  '"served":"a,b","stopping":"yes"}'),
        )  # fmt: skip
        cursor.execute(
            "INSERT INTO tuitop_config (one, version, fields) VALUES (1, 1, 'garbage') "
            "ON DUPLICATE KEY UPDATE fields = 'garbage'"
        )
        cursor.execute(
            "INSERT INTO tuitop_stats (bucket, name, count) VALUES (%s, 'done', -9000000000), "
            "(%s, 'latency:wait:latency_10s:99', 5), (%s, '\U0001f600', 1)",
            (int(time.time()) // 10 * 10,) * 3,
        )


async def test_odd_rows_and_garbage_in_tuitops_tables_neither_crash_nor_stall(
    tmp_path: Path, pools: list[Pool], database: DatabaseSettings
) -> None:
    """Rows anyone may write: odd messages in Tuleap's table (each dead-lettered, the
    other queue's row left alone), garbage in tuitop_workers / tuitop_pools /
    tuitop_config / tuitop_stats. The pool, the CLI and the UI go on."""
    from tests.pool import run_tuitop
    from tests.tui_pilot import SIZE, until
    from tuitop.config import load_config
    from tuitop.tui.app import TuitopApp
    from tuitop.tui.source import SnapshotSource
    from tuitop.tui.workers import WorkersPanel

    config = database_inc(tmp_path, database, workers=2)
    pool = Pool(tmp_path, config, "--grace", "1")  # no task process: unknown topics
    pools.append(pool.start())
    pool.wait_for_log(r"Start service", count=2)
    _garbage_in_tuitops_tables(database)
    accepted = _insert_odd_rows(database)
    wait_until(
        lambda: (
            count(database, "async_events", "queue_name = 'app_user_events'") == 0
            and count(database, "tuitop_processing") == 0
        ),
        60,
        "every odd row out of the queue",
    )
    assert count(database, "async_events") == 1  # the other queue's row, untouched
    dead = count(database, "tuitop_dead_letters")
    assert dead == accepted, (dead, pool.log()[-3000:])
    listed = run_tuitop("dead-letters", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    for index in range(accepted):
        shown = run_tuitop("dead-letters", "show", str(index), "--config", str(config))
        assert shown.returncode == 0, (index, shown.stderr[-2000:])
    source = SnapshotSource(lambda: load_config([str(config)]).settings, [str(config)])
    app = TuitopApp(source, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: app.snapshot is not None and len(app.snapshot.workers) >= 2)
        await pilot.pause(1.0)
        assert app.query_one(WorkersPanel).row_count >= 2
        await pilot.press("d")
        await pilot.pause(1.0)
    source.close()
    log = pool.log() + pool.output()
    assert "Traceback" not in log and "crashed" not in log, log[-4000:]
    assert database.password.reveal() not in log


def test_a_save_switching_redis_and_the_database_live_serves_each_in_turn(
    tmp_path: Path,
    pools: list[Pool],
    tuleap: Tuleap,
    database: DatabaseSettings,
    redis_server,
    redis_client,  # type: ignore[no-untyped-def]
) -> None:
    """README "Which queue": a save that changes the queue moves the pool at once, its
    workers one by one after their job; and back."""
    from tests.pool import write_config
    from tests.tuleap import php_message
    from tuitop.backends.redis import keys

    local = write_config(tmp_path, port=redis_server.port, workers=2,
                         extra="$tuitop_queue = 'redis';")  # fmt: skip
    dbinc = database_inc(tmp_path, database, workers=2)
    pool = Pool(tmp_path, local, "--config", str(dbinc), "--task-command",
                "tuleap queue:task-worker-process", "--task-dir", str(tuleap.root),
                "--grace", "2", env=tuleap.env)  # fmt: skip
    pools.append(pool.start())
    pool.wait_for_log(r"Start service", count=2)
    redis_client.lpush(keys.QUEUE, php_message("tuleap.fts.index-item", '{"id":"r1"}', time.time()))
    wait_until(lambda: tuleap.runs_of("r1", "end"), 20, "redis served")
    enqueue(database, "tuleap.fts.index-item", {"id": "d1"})
    write_config(tmp_path, port=redis_server.port, workers=2, extra="$tuitop_queue = 'db';")
    wait_until(lambda: tuleap.runs_of("d1", "end"), 30, "db served after the save")
    redis_client.lpush(keys.QUEUE, php_message("tuleap.fts.index-item", '{"id":"r2"}', time.time()))
    write_config(tmp_path, port=redis_server.port, workers=2, extra="$tuitop_queue = 'redis';")
    wait_until(lambda: tuleap.runs_of("r2", "end"), 30, "redis served again")
    enqueue(database, "tuleap.fts.index-item", {"id": "d2"})
    write_config(tmp_path, port=redis_server.port, workers=2, extra="$tuitop_queue = 'db';")
    wait_until(lambda: tuleap.runs_of("d2", "end"), 30, "db served again")
    log = pool.log() + pool.output()
    assert "Traceback" not in log and "Unexpected error" not in log, log[-3000:]
    for message_id in ("r1", "d1", "r2", "d2"):
        assert len(tuleap.runs_of(message_id)) == 1
    assert pool.stop() == 0
