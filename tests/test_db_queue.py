"""The database queue's moves (tuitop.backends.db), against a real MariaDB server holding
Tuleap's ``async_events``, filled the way Tuleap's front end fills it."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid

import pymysql
import pytest

from tests.tuleapdb import connect, count, enqueue
from tuitop.backends.base import RetryPolicy, TimedOut
from tuitop.backends.db.channel import DbChannel
from tuitop.backends.db.lanes import TakePlan
from tuitop.backends.db.queue import DbQueue, uuid7
from tuitop.backends.db.schema import REASON_BYTES, create_tables, fit, fit_json
from tuitop.backends.db.view import DbView
from tuitop.beats import PoolBeat, WorkerBeat
from tuitop.config import DatabaseSettings
from tuitop.lanes import DEFAULT_LANE, LaneSet
from tuitop.message import encode, job_key
from tuitop.phpjson import task_input
from tuitop.snapshot import Snapshot
from tuitop.stats import MAX_TOPICS, OTHER_TOPIC, StatsBatch

WORKER = "host-a/0#100"
OTHER = "host-b/0#200"


@pytest.fixture
def queue(database: DatabaseSettings) -> DbQueue:
    queue = DbQueue(database, RetryPolicy(base_delay=0.2))
    queue.session.run(create_tables)
    return queue


def take(queue: DbQueue, worker: str = WORKER, count: int = 10) -> list:
    messages, _, _ = queue.take(worker, count)
    return messages


def test_a_task_gets_tuleaps_stdin_for_a_row(queue: DbQueue, database: DatabaseSettings) -> None:
    """TaskWorkerProcess writes Psl\\Json\\encode(WorkerEventContent): the topic, then the
    payload as the row holds it (slashes and non-ASCII unescaped, as Tuleap wrote them)."""
    payload = '{"artifact_id":42,"path":"repo/x.git","who":"Jérôme"}'
    enqueue(database, "tuleap.tracker.artifact", payload, now=1_700_000_000.25)
    [message] = take(queue)
    assert message.raw == (
        b'{"event_name":"tuleap.tracker.artifact","payload":' + payload.encode() + b"}"
    )
    assert message.topic == "tuleap.tracker.artifact"
    assert message.payload == {"artifact_id": 42, "path": "repo/x.git", "who": "Jérôme"}
    assert message.enqueue_ts == pytest.approx(1_700_000_000.25)
    assert message.queued_total == 0 and message.row_id is not None
    assert task_input("t", "[]") == b'{"event_name":"t","payload":[]}'


def test_a_row_php_cannot_read_is_taken_with_its_reason_and_dead_lettered_at_once(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    """Tuleap's worker would die on such a row (Psl\\Json throws outside its try) and take
    it again forever; tuitop runs nothing and gives it up with PHP's reason."""
    enqueue(database, "tuleap.fts.index-item", '{"score": 1e400}')
    [message] = take(queue)
    assert message.topic == "tuleap.fts.index-item"
    assert message.problem == (
        "Tuleap's worker cannot read its payload: Inf and NaN cannot be JSON encoded"
    )
    assert queue.fail(WORKER, message, f"unusable message: {message.problem}", retryable=False)
    [letter] = queue.dead_letters()
    assert "Inf and NaN" in letter.reason and letter.topic == "tuleap.fts.index-item"


def _insert_version_1_row(database: DatabaseSettings, first_byte: int, stamp: float) -> None:
    """A row as Tuleap's migrations insert it, id UUID_TO_BIN(UUID()): a version-1 id,
    whose first four bytes are the clock's low bits (``first_byte`` fixes the first, as
    the clock would have it at some moment)."""
    version_1 = bytes([first_byte]) + uuid.uuid1().bytes[1:]
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO async_events (id, queue_name, topic, payload, enqueue_timestamp, "
            "enqueue_timestamp_microsecond, nb_added_in_queue) VALUES (%s, %s, %s, %s, %s, 0, 0)",
            (version_1, "app_user_events", "tuleap.fts.index-item", "{}", int(stamp)),
        )


def _snapshot(database: DatabaseSettings, now: float) -> Snapshot:
    view = DbView(database, LaneSet(), "test")
    try:
        return view.snapshot(now)
    finally:
        view.close()


def test_the_oldest_waiting_row_is_seen_behind_a_version_1_id(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    """Some of Tuleap's migrations insert rows with UUID_TO_BIN(UUID()): version-1 ids,
    whose first bytes are time's low bits, so such a row sorts after every UUIDv7 id
    (taken last). A view must still see its age: SYSTEM_CHECK warns on the oldest."""
    now = time.time()
    _insert_version_1_row(database, 0xF0, now - 600)  # after every v7 id
    enqueue(database, "tuleap.tracker.artifact", {"id": 1}, now=now - 5)
    queue_view = _snapshot(database, now).queue
    assert queue_view.waiting == 2
    assert queue_view.oldest_age == pytest.approx(600, abs=1)


@pytest.mark.xfail(
    strict=True,
    reason="known limit (docs/database.md): version-1 ids sort by the clock's low bits, "
    "which wrap every 429 s; the oldest of several such rows may be at neither end of the "
    "ids, and finding it would read every row of the lane at each refresh",
)
def test_the_oldest_of_two_version_1_rows_is_seen(database: DatabaseSettings) -> None:
    """Two migrations an hour apart, workers down meanwhile: the older row's id sorts
    before the newer's, and neither end of the lane's ids is the oldest row (found by the
    second reading)."""
    now = time.time()
    enqueue(database, "tuleap.tracker.artifact", {"id": 1}, now=now - 5)
    _insert_version_1_row(database, 0x80, now - 3600)
    _insert_version_1_row(database, 0xF0, now - 60)
    queue_view = _snapshot(database, now).queue
    assert queue_view.waiting == 3
    assert queue_view.oldest_age == pytest.approx(3600, abs=1)


def test_a_pool_kill_at_the_time_limit_gives_up_only_the_row_it_ran(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    """Tuleap often queues one event twice (two pushes to a repository): a worker holding
    both rows is killed at the time limit while it runs the first; only that one is
    given up, the other goes back. Their stdin is the same: the job's key holds the row's
    id (found by the second reading: both were dead-lettered)."""
    payload = '{"repository_id":5}'
    enqueue(database, "tuleap.git.repository-change", payload)
    enqueue(database, "tuleap.git.repository-change", payload)
    running, waiting = take(queue, count=2)
    assert running.raw == waiting.raw and running.row_id != waiting.row_id
    recovery = queue.recover(
        WORKER, "killed: its job ran past the time limit", timed_out=TimedOut(job_key(running))
    )
    assert (recovery.dead_lettered, recovery.requeued) == (1, 1)
    [letter] = queue.dead_letters()
    assert "not retried" in letter.reason


def test_take_moves_the_oldest_rows_into_the_workers_hands(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    now = time.time()
    ids = [enqueue(database, "t", {"n": n}, now=now + n / 100) for n in range(5)]
    taken = take(queue, count=3)
    assert [message.row_id for message in taken] == ids[:3]
    assert count(database, "async_events") == 2
    assert count(database, "tuitop_processing", f"worker_id = '{WORKER}'") == 3
    assert [m.row_id for m in queue.held(WORKER)] == ids[:3]


def test_two_workers_taking_at_once_never_get_the_same_row(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    for n in range(200):
        enqueue(database, "t", {"n": n})
    got: dict[str, list[bytes]] = {WORKER: [], OTHER: []}
    failed: list[BaseException] = []

    def drain(worker: str) -> None:
        mine = DbQueue(database)
        try:
            while batch := take(mine, worker, 7):
                got[worker] += [message.row_id for message in batch]
        except BaseException as error:  # said below: a deadlock must be taken again
            failed.append(error)

    threads = [threading.Thread(target=drain, args=(w,)) for w in got]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failed == []
    everything = got[WORKER] + got[OTHER]
    assert len(everything) == len(set(everything)) == 200


def test_ack_deletes_and_says_when_some_were_gone(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    for n in range(3):
        enqueue(database, "t", {"n": n})
    taken = take(queue)
    stats = StatsBatch()
    stats.outcome("done", 2)
    assert queue.ack(WORKER, taken[:2], stats)
    assert count(database, "tuitop_processing") == 1
    assert count(database, "tuitop_stats", "name = 'done' AND count = 2") == 1
    queue.recover(WORKER, "stopped beating")  # as another pool does, the worker silent
    assert not queue.ack(WORKER, taken[2:], StatsBatch())


def test_topics_go_with_the_ack_and_a_view_reads_them_capped(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    enqueue(database, "tuleap.tracker.artifact", {"n": 1})
    taken = take(queue)
    stats = StatsBatch()
    stats.topic("tuleap.tracker.artifact", wait=0.01, run=0.2)
    stats.topic("tuleap.tracker.artifact", wait=0.01, run=0.4, failed=True)
    for n in range(MAX_TOPICS * 2):  # a hostile producer's names, each 200 characters long
        stats.topic(f"h{n:03d}" + "x" * 196, wait=None, run=0.001)
    assert queue.ack(WORKER, taken, stats)
    rows = count(database, "tuitop_stats", "name LIKE 't#n|%'")
    assert rows == MAX_TOPICS + 1  # the topic, MAX_TOPICS - 1 of those names, (other)
    view = DbView(database, LaneSet(), "test")
    try:
        topics = view.snapshot(time.time()).last_five_minutes.topics
    finally:
        view.close()
    artifact = topics["tuleap.tracker.artifact"]
    assert (artifact.count, artifact.failed, artifact.run.count) == (2, 1, 2)
    assert topics[OTHER_TOPIC].count == MAX_TOPICS + 1
    assert len(topics) == MAX_TOPICS + 1


def test_many_workers_share_one_cap_per_bucket_in_the_database(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    for worker in range(4):
        stats = StatsBatch()
        stats.topic("tuleap.tracker.artifact", wait=0.01, run=0.2)
        for n in range(MAX_TOPICS - 1):
            stats.topic(f"w{worker}.{n}", wait=None, run=0.001)
        assert queue.ack(f"host/{worker}#1", [], stats)
    assert count(database, "tuitop_stats", "name LIKE 't#n|%'") == MAX_TOPICS + 1
    view = DbView(database, LaneSet(), "test")
    try:
        topics = view.snapshot(time.time()).last_five_minutes.topics
    finally:
        view.close()
    assert topics["tuleap.tracker.artifact"].count == 4
    assert topics[OTHER_TOPIC].count == 3 * (MAX_TOPICS - 1)


def test_given_back_messages_are_taken_next_in_their_order(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    now = time.time()
    ids = [enqueue(database, "t", {"n": n}, now=now + n / 100) for n in range(4)]
    taken = take(queue)
    queue.give_back(WORKER, taken[1:])
    assert [m.row_id for m in take(queue, OTHER)] == ids[1:]
    assert [m.queued_total for m in queue.held(OTHER)] == [0, 0, 0]  # never tried


def test_a_failure_waits_for_its_retry_with_one_try_more(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    enqueue(database, "t", {"n": 1})
    [message] = take(queue)
    assert queue.fail(WORKER, message, "boom") == "retried"
    assert count(database, "tuitop_delayed", "nb_added_in_queue = 1") == 1
    assert queue.move_due() == 0  # not due yet (0.2 s)
    due_in = queue.due_in()  # by the database's clock
    assert due_in is not None and 0 < due_in <= 0.21
    time.sleep(0.25)
    assert queue.move_due() == 1
    [again] = take(queue)
    assert again.row_id == message.row_id and again.queued_total == 1


def test_a_retry_can_carry_what_is_left_of_the_job(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    enqueue(database, "t", {"mails": [1, 2]})
    [message] = take(queue)
    queue.fail(WORKER, message, "one mail left", payload={"mails": [2], "note": "é/"})
    time.sleep(0.25)
    queue.move_due()
    [again] = take(queue)
    assert again.payload == {"mails": [2], "note": "é/"}


def test_past_tuleaps_three_returns_a_message_is_a_dead_letter(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    enqueue(database, "tuleap.git.hooks.post-receive", {"repo": 3})
    for _ in range(3):
        [message] = take(queue)
        assert queue.fail(WORKER, message, "task exited with status 1") == "retried"
        time.sleep(0.25 * 2**message.queued_total)
        queue.move_due()
    [message] = take(queue)
    assert message.queued_total == 3
    assert queue.fail(WORKER, message, "task exited with status 1", traceback="tb") == "dead"
    [letter] = queue.dead_letters()
    assert "given up after 4 tries" in letter.reason and letter.tries == 3
    assert letter.topic == "tuleap.git.hooks.post-receive" and letter.traceback == "tb"
    assert json.loads(letter.message) == {
        "event_name": "tuleap.git.hooks.post-receive",
        "payload": {"repo": 3},
    }
    assert count(database, "async_events") + count(database, "tuitop_processing") == 0


def test_a_failure_not_worth_a_retry_is_a_dead_letter_at_once(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    enqueue(database, "", {"n": 1})  # no topic: unusable
    [message] = take(queue)
    assert message.problem == "no event_name"
    assert queue.fail(WORKER, message, "unusable message: no event_name", retryable=False) == "dead"
    assert queue.dead_letter_count() == 1


def test_a_failure_reason_longer_than_its_column_is_cut_not_refused(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    """A relay's 150-line 550 answer, a handler's long exception: strict mode refused a
    reason over TEXT's 64 KiB, and the move failed at every try (issue 22: the worker
    retried forever, the message stuck in its hands). It is cut to the column, saying so."""
    enqueue(database, "tuleap.tracker.artifact", {"id": 1})
    [message] = take(queue)
    reason = "550 5.1.1 " + "é" * 40_000 + " mailbox unavailable"  # 80 KB of UTF-8
    trace = "Traceback\n" + "x" * 70_000
    assert queue.fail(WORKER, message, reason, traceback=trace, retryable=False) == "dead"
    [letter] = queue.dead_letters()
    assert len(letter.reason.encode()) <= REASON_BYTES
    assert (
        letter.reason.startswith("550 5.1.1 éé") and "bytes cut to fit the column" in letter.reason
    )
    assert letter.traceback == trace  # MEDIUMTEXT holds it
    assert count(database, "tuitop_processing") == 0


def test_fit_cuts_at_a_characters_boundary_and_says_how_much() -> None:
    assert fit("short", 100) == "short"
    cut = fit("€" * 100, 50)  # 3 bytes each
    assert (
        len(cut.encode()) <= 50 and cut.startswith("€") and cut.endswith("cut to fit the column)")
    )
    cut.encode("utf-8")  # no half character


def test_a_failure_of_a_message_recovered_meanwhile_writes_nothing(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    enqueue(database, "t", {"n": 1})
    [message] = take(queue)
    assert queue.recover(WORKER, "gone").requeued == 1
    assert queue.fail(WORKER, message, "late") == "gone"
    assert count(database, "tuitop_delayed") == 1


def test_recovery_spares_a_worker_that_still_beats(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    enqueue(database, "t", {"n": 1})
    queue.register(WORKER, "host-a", {}, ttl=10)
    take(queue)
    assert queue.recover(WORKER, "silent?", unless_beating=True).total == 0
    assert queue.leased(WORKER)
    queue.register(WORKER, "host-a", {}, ttl=-1)  # its heartbeat expired
    assert queue.recover(WORKER, "stopped beating", unless_beating=True).requeued == 1
    assert not queue.leased(WORKER)  # a thawed worker knows
    assert not queue.beat(WORKER, {}, 10)


def test_dead_letters_replay_once_each_and_purge(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    for n in range(3):
        enqueue(database, "t", {"n": n})
    for message in take(queue):
        queue.fail(WORKER, message, "bad payload", retryable=False)
    letters = queue.dead_letters()
    assert [json.loads(letter.message)["payload"]["n"] for letter in letters] == [2, 1, 0]
    assert queue.replay(letters[0])
    assert not queue.replay(letters[0])  # once
    assert queue.replay_all() == 2
    assert queue.dead_letter_count() == 0
    again = take(queue)
    assert sorted(m.payload["n"] for m in again) == [0, 1, 2]
    assert all(m.queued_total == 0 for m in again)
    queue.fail(WORKER, again[0], "x", retryable=False)
    assert queue.purge_dead_letters() == 1


def test_push_writes_a_row_as_tuleap_does_and_a_marker(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    queue.push_marked(encode("tuleap.tracker.artifact", {"a": "x/é"}), "f" * 32)
    assert queue.was_pushed("f" * 32) and not queue.was_pushed("0" * 32)
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT queue_name, topic, payload, nb_added_in_queue FROM async_events")
        assert cursor.fetchone() == ("app_user_events", "tuleap.tracker.artifact", '{"a":"x/é"}', 0)


def test_hand_back_gives_tuleap_everything_only_tuitop_reads(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    for n in range(3):
        enqueue(database, "t", {"n": n})
    first, *_ = take(queue)
    queue.fail(WORKER, first, "later")  # a retry waiting its time
    handed = queue.hand_back("handed back")
    assert (handed.recovered, handed.retries) == (2, 3)
    assert count(database, "async_events") == 3
    assert count(database, "tuitop_processing") + count(database, "tuitop_delayed") == 0


def test_a_take_cut_short_leaves_every_row_where_it_was(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    """A worker killed between its locking read and its commit: the server rolls back."""
    enqueue(database, "t", {"n": 1})

    def killed(cursor: pymysql.cursors.Cursor) -> None:
        cursor.execute("SELECT id FROM async_events FOR UPDATE SKIP LOCKED")
        cursor.execute("INSERT INTO tuitop_processing SELECT *, 'w', 0 FROM async_events")
        cursor.execute("DELETE FROM async_events")
        raise KeyboardInterrupt  # the process dies here

    with pytest.raises(KeyboardInterrupt):
        queue.session.transaction(killed)
    assert count(database, "async_events") == 1 and count(database, "tuitop_processing") == 0
    assert len(take(queue)) == 1  # nothing stays locked


def test_uuid7_ids_follow_time() -> None:
    ids = [uuid7(1_700_000_000 + n / 10_000) for n in range(50)]
    assert ids == sorted(ids)
    assert all(i[6] >> 4 == 7 and i[8] >> 6 == 0b10 for i in ids)


# --- lanes: a lane is a queue_name of Tuleap's table ------------------------------------

JIRA = "tuleap.tracker.creation.jira"
LANES = LaneSet.parse(f"latency_15m(1): {JIRA}")


def queue_names(database: DatabaseSettings) -> list[tuple[str, str]]:
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT topic, queue_name FROM async_events ORDER BY id")
        return list(cursor.fetchall())


def test_a_default_worker_moves_a_lanes_message_to_its_lane(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    now = time.time()
    enqueue(database, JIRA, {"n": 1}, now=now)
    enqueue(database, "tuleap.tracker.artifact", {"n": 2}, now=now + 0.01)
    taken, lane, _ = queue.take(WORKER, 10, TakePlan(LANES, (DEFAULT_LANE,)))
    assert (lane, [m.topic for m in taken]) == (DEFAULT_LANE, ["tuleap.tracker.artifact"])
    assert queue_names(database) == [(JIRA, "app_user_events-lane-latency_15m")]
    assert count(database, "tuitop_lanes", "lane = 'latency_15m'") == 1
    assert count(database, "tuitop_bell", "bell > 0") == 1  # its idle workers are rung
    # The default lane's workers never take a lane's work; the lane's worker does.
    assert queue.take(OTHER, 10, TakePlan(LANES, (DEFAULT_LANE,)))[0] == []
    taken, lane, _ = queue.take(OTHER, 10, TakePlan(LANES, ("latency_15m", DEFAULT_LANE)))
    assert (lane, [m.topic for m in taken]) == ("latency_15m", [JIRA])


def test_a_lane_worker_takes_its_lane_first_then_helps_the_default_lane(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    now = time.time()
    enqueue(database, "tuleap.tracker.artifact", {"n": 1}, now=now)
    enqueue(database, JIRA, {"n": 2}, now=now + 0.01)
    plan = TakePlan(LANES, ("latency_15m", DEFAULT_LANE))
    # Taken from Tuleap's queue, where every message arrives: its own lane's, kept.
    first, lane, _ = queue.take(WORKER, 10, plan)
    assert (lane, sorted(m.topic for m in first)) == (
        DEFAULT_LANE,
        sorted([JIRA, "tuleap.tracker.artifact"]),
    )
    queue.give_back(WORKER, first)
    default = TakePlan(LANES, (DEFAULT_LANE,))
    queue.take(OTHER, 10, default)  # routes the import to its lane, takes the other
    queue.ack(OTHER, queue.held(OTHER), StatsBatch())
    enqueue(database, "tuleap.tracker.artifact", {"n": 3})
    again, lane, _ = queue.take(WORKER, 10, plan)
    assert (lane, [m.topic for m in again]) == ("latency_15m", [JIRA])  # its own first


def test_behind_a_lanes_backlog_the_default_lane_is_served(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    """A backlog of another lane at the head of Tuleap's queue is moved out of the way
    by the default lane's takes (a few rounds each), never read again by them."""
    now = time.time()
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO async_events VALUES (%s, 'app_user_events', %s, '{}', %s, 0, 0)",
            [(uuid7(now - 100 + n / 1000), JIRA, int(now)) for n in range(600)],
        )
    enqueue(database, "tuleap.tracker.artifact", {"n": "behind"})
    plan = TakePlan(LANES, (DEFAULT_LANE,))
    takes = 0
    while not (taken := queue.take(WORKER, 32, plan)[0]):
        takes += 1
        assert takes < 10
    assert [m.payload for m in taken] == [{"n": "behind"}]
    assert count(database, "async_events", "queue_name = 'app_user_events-lane-latency_15m'") == 600


def test_a_lane_no_pool_serves_goes_back_to_tuleaps_queue(database: DatabaseSettings) -> None:
    from tuitop.backends.db.pool import DbPoolStore
    from tuitop.beats import PoolBeat

    store = DbPoolStore(database, pool_name="a", retry=RetryPolicy(), socket_timeout=3)
    store.ping()  # its tables
    enqueue(database, JIRA, {"n": 1})
    store.queue.take(WORKER, 1, TakePlan(LANES, (DEFAULT_LANE,)))
    assert store.claim_name("b", "b-token", 10)
    store.publish("b", PoolBeat(served=("latency_15m",)), 10, {"latency_15m"}, False)
    assert store.unserved_lanes_back(10) == {}  # served, by b
    assert store.release_lanes("a", {"latency_15m"}) == {}  # b still serves it
    assert store.release_lanes("b", {"latency_15m"}) == {"latency_15m": 1}
    assert queue_names(database) == [(JIRA, "app_user_events")]
    store.queue.take(WORKER, 1, TakePlan(LANES, (DEFAULT_LANE,)))  # routed again
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("UPDATE tuitop_lanes SET served_at = 0")  # no pool said so lately
    assert store.unserved_lanes_back(10) == {"latency_15m": 1}
    assert store.unserved_lanes_back(10) == {}
    assert count(database, "tuitop_lanes") == 0  # empty and unserved: forgotten
    store.close()


def test_hand_back_gives_tuleap_its_lanes_messages_too(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    enqueue(database, JIRA, {"n": 1})
    queue.take(WORKER, 1, TakePlan(LANES, (DEFAULT_LANE,)))
    assert queue.hand_back("handed back").lanes == {"latency_15m": 1}
    assert queue_names(database) == [(JIRA, "app_user_events")]


def test_a_worker_beats_while_it_holds_its_lease(database: DatabaseSettings) -> None:
    channel = DbChannel(
        database,
        lanes=LaneSet(),
        serves=(DEFAULT_LANE,),
        retry=RetryPolicy(),
        client_name="t",
        socket_timeout=5,
    )
    channel.queue.session.run(create_tables)
    channel.start(WORKER)
    assert channel.beat(WORKER, WorkerBeat(pid=100, state="idle"), 10)
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT pool, beat FROM tuitop_workers WHERE id = %s", (WORKER,))
        pool, beat = cursor.fetchone()
    assert pool == "host-a" and json.loads(beat)["state"] == "idle"
    channel.leave(WORKER)
    assert not channel.leased(WORKER) and not channel.beat(WORKER, WorkerBeat(), 10)


def test_fit_json_cuts_the_longest_texts_until_the_object_fits() -> None:
    fields = {"ids": ",".join(str(n) for n in range(40_000)), "name": "é\x01" * 30_000, "n": 7}
    text = fit_json(fields, 65_535)
    assert len(text) <= 65_535
    document = json.loads(text)
    assert document["n"] == 7 and document["ids"].startswith("0,1,2,")
    assert "cut to fit the column" in document["ids"] + document["name"]
    assert fit_json({"a": "short"}) == '{"a": "short"}'
    chance = random.Random(22)
    alphabet = 'a,é\x01\u2028😀\udcff"\\'
    for _ in range(200):
        fields = {
            f"f{n}": "".join(chance.choices(alphabet, k=chance.randrange(0, 30_000)))
            for n in range(chance.randrange(1, 6))
        }
        limit = chance.randrange(1_000, 70_000)
        text = fit_json(fields, limit)
        assert len(text) <= limit and set(json.loads(text)) == set(fields)


def test_a_heartbeat_and_a_config_past_their_column_are_cut_not_refused(
    database: DatabaseSettings,
) -> None:
    """A forge's $sys_async_emails of 30,000 projects, a pool of a thousand workers on a
    long host name: the pool's beat and published config pass 64 KiB (TEXT), which strict
    mode refused at every tick."""
    from tuitop.backends.db.pool import DbPoolStore

    store = DbPoolStore(database, pool_name="big", retry=RetryPolicy(), socket_timeout=3)
    store.ping()
    assert store.claim_name("big", "token", 10)
    scope = ",".join(str(n) for n in range(100_000, 130_000))
    host = "forge-" + "x" * 58
    workers = tuple(f"{host}/{slot}#{100000 + slot}" for slot in range(1024))
    beat = PoolBeat(host=host, pid=1, wanted=1024, running=1024, async_scope=scope,
                    workers=workers, beat=time.time())  # fmt: skip
    store.publish("big", beat, 10, set(), False)
    store.publish_config({"async_scope": scope, "workers": 1024})
    store.reply("c1", json.dumps({"pool": "big", "ok": False, "said": "x" * 70_000}).encode())
    snapshot = DbView(database, LaneSet.parse(""), "test").snapshot(time.time())
    [pool] = snapshot.pools
    assert pool.running == 1024 and pool.async_scope.startswith("100000,100001,")
    queue = DbQueue(database)
    queue.register(WORKER, "big", {}, 10)
    assert queue.beat(WORKER, {"topic": "t" * 70_000, "state": "busy"}, 10)


def test_a_failure_reason_holding_lone_surrogates_is_written_escaped(
    queue: DbQueue, database: DatabaseSettings
) -> None:
    """A handler's exception quoting a payload's ``"\\ud800"`` (JSON lets a lone surrogate
    through), a task's stderr decoded with surrogateescape: no UTF-8 can say them, and the
    driver's encoding failed the move at every try. They are written as escapes."""
    enqueue(database, "tuleap.tracker.artifact", {"id": 1})
    [message] = take(queue)
    reason = "bad address '\ud800' in payload; stderr: \udcff"
    assert queue.fail(WORKER, message, reason, traceback="at \udfff", retryable=False) == "dead"
    [letter] = queue.dead_letters()
    assert letter.reason == "bad address '\\ud800' in payload; stderr: \\udcff"
    assert letter.traceback == "at \\udfff"
    assert len(fit_json({"a": "\ud800" * 40_000}, 1000)) <= 1000
