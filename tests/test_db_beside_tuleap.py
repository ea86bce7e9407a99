"""tuitop's moves beside Tuleap's own database worker (a rolling switch, or a forge that
runs both): Tuleap's worker takes in REPEATABLE READ and keeps its transaction open
through its task — up to 15 minutes — with a next-key lock on its row and the gap before
it. A row tuitop puts back (a retry falling due, a give-back, a lane moved back) must
never wait behind that lock: each move here runs while such a worker holds a row, on a
session that waits 2 s for a lock at most — a move that waited raises error 1205, which
fails the test — and the message put back is still the next one taken."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pool import Pool, wait_until
from tests.tuleap import Tuleap, start_db_pool
from tests.tuleapdb import connect, count, database_inc, enqueue
from tuitop.backends.base import RetryPolicy
from tuitop.backends.db.queue import DbQueue
from tuitop.backends.db.schema import QUEUE_NAME, create_tables
from tuitop.config import DatabaseSettings
from tuitop.lanes import lane_queue

WORKER = "host-a/0#100"


class TuleapWorker:
    """Tuleap's ``DBPersistentQueue::listen`` holding a row: its transaction open in
    REPEATABLE READ (PDO's, the server's default — set here whatever the server's is)."""

    def __init__(self, database: DatabaseSettings) -> None:
        self.connection = connect(database)
        with self.connection.cursor() as cursor:
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        self.connection.autocommit(False)

    def take(self) -> bytes:
        """Takes the first row no one holds, as Tuleap does, and keeps it (its task runs)."""
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT id FROM async_events WHERE queue_name = %s ORDER BY id "
                "LIMIT 1 FOR UPDATE SKIP LOCKED",
                (QUEUE_NAME,),
            )
            row = cursor.fetchone()
        assert row is not None
        return bytes(row[0])

    def close(self) -> None:
        self.connection.rollback()
        self.connection.close()


@pytest.fixture
def queue(database: DatabaseSettings) -> DbQueue:
    """tuitop's moves, waiting 2 s at most for a row lock (a worker's)."""
    queue = DbQueue(database, RetryPolicy(base_delay=0.01), lock_wait=2)
    queue.session.run(create_tables)
    return queue


@pytest.fixture
def tuleap(database: DatabaseSettings) -> Iterator[TuleapWorker]:
    worker = TuleapWorker(database)
    yield worker
    worker.close()


def topics_taken(queue: DbQueue, count: int = 10) -> list[str]:
    messages, _, _ = queue.take(WORKER, count)
    return [str(message.payload["id"]) for message in messages]


def fill(database: DatabaseSettings, *names: str) -> None:
    start = time.time() - 60
    for index, name in enumerate(names):
        enqueue(database, "tuleap.tracker.artifact", {"id": name}, now=start + index)


def test_a_retry_falls_due_while_tuleaps_worker_holds_a_row(
    queue: DbQueue, tuleap: TuleapWorker, database: DatabaseSettings
) -> None:
    fill(database, "old", "held", "new")
    [message], _, _ = queue.take(WORKER, 1)
    assert queue.fail(WORKER, message, "boom") == "retried"
    tuleap.take()  # "held": Tuleap's task runs
    time.sleep(0.05)
    assert queue.move_due() == 1
    assert topics_taken(queue) == ["old", "new"]  # the retry first, as before


def test_a_give_back_while_tuleaps_worker_holds_a_row(
    queue: DbQueue, tuleap: TuleapWorker, database: DatabaseSettings
) -> None:
    fill(database, "first", "held", "later")
    [message], _, _ = queue.take(WORKER, 1)
    tuleap.take()
    queue.give_back(WORKER, [message])
    assert count(database, "tuitop_processing") == 0
    assert topics_taken(queue) == ["first", "later"]


def test_a_lane_moved_back_while_tuleaps_worker_holds_a_row(
    queue: DbQueue, tuleap: TuleapWorker, database: DatabaseSettings
) -> None:
    fill(database, "laned", "held", "later")
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.execute(
            "UPDATE async_events SET queue_name = %s ORDER BY id LIMIT 1", (lane_queue("bulk"),)
        )
    tuleap.take()
    assert queue.move_lane_back("bulk") == 1
    assert topics_taken(queue) == ["laned", "later"]


def test_with_every_row_held_a_retry_goes_after_them(
    queue: DbQueue, tuleap: TuleapWorker, database: DatabaseSettings
) -> None:
    fill(database, "old", "held")
    [message], _, _ = queue.take(WORKER, 1)
    assert queue.fail(WORKER, message, "boom") == "retried"
    tuleap.take()
    time.sleep(0.05)
    assert queue.move_due() == 1
    assert topics_taken(queue) == ["old"]


def test_a_pools_retry_runs_while_tuleaps_loop_holds_a_row(
    tmp_path: Path, pools: list[Pool], database: DatabaseSettings
) -> None:
    """End to end: the real pool, a task that fails once, and Tuleap's worker holding the
    row behind it through a long task: the retry runs within seconds, not after it."""
    tuleap_cli = Tuleap(tmp_path)
    config = database_inc(tmp_path, database, workers=1)
    start_db_pool(pools, tmp_path, tuleap_cli, config, "--retry-delay", "0.05")
    enqueue(database, "tuleap.tracker.artifact",
            {"id": "flaky", "standin": {"fail_times": 1, "sleep": 1}})  # fmt: skip
    wait_until(lambda: tuleap_cli.runs_of("flaky"), 20, "the first run")
    enqueue(database, "tuleap.tracker.artifact", {"id": "held"})
    worker = TuleapWorker(database)
    try:
        worker.take()  # while the pool's only worker is busy: Tuleap's task runs on
        wait_until(lambda: len(tuleap_cli.runs_of("flaky", "end")) == 2, 15, "the retry run")
        assert not tuleap_cli.runs_of("held")
    finally:
        worker.close()
    wait_until(lambda: tuleap_cli.runs_of("held", "end"), 20, "the held row, once let go")


def test_a_retry_placed_beside_rows_placed_before_waits_for_no_lock(
    queue: DbQueue, tuleap: TuleapWorker, database: DatabaseSettings
) -> None:
    """Placed rows get consecutive ids: Tuleap's worker then holds the first of them,
    and the next placement lands right before the second — on the held row's own id."""
    fill(database, "a", "b", "c", "tail")
    first = queue.take(WORKER, 2)[0]
    for message in first:
        assert queue.fail(WORKER, message, "boom") == "retried"
    [c], _, _ = queue.take(WORKER, 1)
    time.sleep(0.05)
    assert queue.move_due() == 2  # a, b: just before "tail", consecutive ids
    tuleap.take()  # "a": Tuleap's task runs
    assert queue.fail(WORKER, c, "boom") == "retried"
    time.sleep(0.05)
    assert queue.move_due() == 1
    assert topics_taken(queue) == ["c", "b", "tail"]


def test_a_take_of_the_rows_behind_one_tuleaps_worker_holds_waits_for_no_lock(
    queue: DbQueue, tuleap: TuleapWorker, database: DatabaseSettings
) -> None:
    """A take's DELETE of the rows it locked reads them by a plan the optimizer picks:
    a scan of a small table reads (and waits for) the row Tuleap's worker holds."""
    fill(database, "held", "a", "b", "c")
    tuleap.take()
    assert topics_taken(queue) == ["a", "b", "c"]
