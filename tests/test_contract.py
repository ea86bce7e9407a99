"""The seam's promises (tuitop/backends/base.py), one suite run against both backends.

As dramatiq runs one suite against each broker, the fixture ``store`` is parametrized over
Redis (a private ``redis-server`` per test) and Tuleap's database (a fresh database on the
run's private MariaDB per test); every test builds its WorkerChannel, PoolStore, QueueAdmin
and StoreView through the factories of :mod:`tuitop.backends` and checks one promise of
their docstrings the same way on both. Real servers, real tuitop code, no mock.

The promise behind them all (base.py's module docstring): at every moment a message is in
exactly one place — the queue, one worker's hands, the delayed retries, the dead letters —
or it is done. :func:`places` counts each place through the seam only (the view's
snapshot, the admin's counts and held lists, the pool's holds) and checks that the readers
agree with each other, so that each step of a test can say where everything is.

Where the two backends differ on purpose, the test says so and checks the documented
difference for each, with a comment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.tuleapdb import enqueue
from tuitop.backends import open_queue, open_view, pool_store, worker_channel
from tuitop.backends.base import (
    HELD_SHOWN,
    MAX_REQUEUES,
    NOT_RETRIED_PAST_LIMIT,
    Batch,
    PoolStore,
    QueueAdmin,
    Recovery,
    RetryPolicy,
    StoreView,
    TimedOut,
    WorkerChannel,
)
from tuitop.beats import WorkerBeat
from tuitop.config import DB_QUEUE, REDIS_QUEUE, DatabaseSettings, RedisSettings, Settings
from tuitop.lanes import DEFAULT_LANE, LaneSet
from tuitop.message import Message, encode, job_key
from tuitop.stats import StatsBatch

TOPIC = "tuitop.contract"
JIRA = "tuleap.tracker.creation.jira"
LONG = "latency_15m"
LANES = LaneSet.parse(f"{LONG}(1): {JIRA}")
"""One lane besides the default one: JIRA imports wait on ``latency_15m``."""
POOL = "contract"
A = f"{POOL}/0#101"
B = f"{POOL}/1#102"
FAST = RetryPolicy(base_delay=0.2)
"""Retries due within a second (the delays double: 0.2, 0.4, 0.8 s)."""
SLOW = RetryPolicy(base_delay=60.0)
"""Retries due long after any test ends: what must not move yet."""
BACKENDS = ["redis", "database"]


# --- the fixture ---------------------------------------------------------------------------


@dataclass
class Store:
    """One backend's queue, fresh for one test, and what the tests build on it."""

    kind: str
    """``redis`` or ``database`` (the fixture's parameter)."""
    settings: Settings
    admin: QueueAdmin
    view: StoreView
    pool: PoolStore
    producer: Callable[[str, str], None]
    """``(topic, payload_json)``: a row or a value written as Tuleap's front end writes it,
    past tuitop's own push (which writes only what it can read back)."""
    _closing: list[Any] = field(default_factory=list)

    def channel(
        self,
        worker_id: str,
        *,
        serves: tuple[str, ...] = (DEFAULT_LANE,),
        retry: RetryPolicy = FAST,
    ) -> WorkerChannel:
        """A worker's channel, started and beating once, as a worker begins (registered:
        every view sees what it holds)."""
        channel = worker_channel(
            self.settings,
            serves=serves,
            retry=retry,
            client_name=f"tuitop:{worker_id}",
            socket_timeout=5.0,
        )
        self._closing.append(channel)
        channel.start(worker_id)
        assert channel.beat(worker_id, beat_of(worker_id, serves), ttl=60.0)
        return channel

    def pool_store(self, retry: RetryPolicy = FAST) -> PoolStore:
        store = pool_store(self.settings.store, pool_name=POOL, retry=retry, socket_timeout=5.0)
        self._closing.append(store)
        store.ping()
        return store

    def push(self, *numbers: int, topic: str = TOPIC, queued_total: int = 0) -> None:
        for number in numbers:
            self.admin.push(encode(topic, {"n": number}, queued_total=queued_total))

    def close(self) -> None:
        for thing in reversed(self._closing):
            thing.close()
        self.view.close()
        self.admin.close()
        self.pool.close()


def beat_of(worker_id: str, serves: tuple[str, ...] = (DEFAULT_LANE,)) -> WorkerBeat:
    slot = int(worker_id.split("/")[1].split("#")[0])
    return WorkerBeat(
        host="contract-host",
        pid=int(worker_id.split("#")[1]),
        pool=POOL,
        slot=slot,
        lane=serves[0],
        serves=serves,
        state="idle",
        beat=time.time(),
    )


def _redis_producer(admin: QueueAdmin) -> Callable[[str, str], None]:
    def produce(topic: str, payload: str) -> None:
        # Tuleap's front end LPUSHes a JSON document; anyone may LPUSH anything: the value
        # as it is (``payload`` is written where a payload goes, unchecked).
        admin.push(b'{"event_name":"' + topic.encode() + b'","payload":' + payload.encode() + b"}")

    return produce


def _database_producer(database: DatabaseSettings) -> Callable[[str, str], None]:
    def produce(topic: str, payload: str) -> None:
        enqueue(database, topic, payload)  # DBPersistentQueueDAO::saveMessage's INSERT

    return produce


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """The queue of one backend, empty: a private Redis server, or a fresh database holding
    Tuleap's ``async_events`` (tuitop's tables made by the admin, as a CLI makes them)."""
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        settings = Settings(
            redis=RedisSettings("127.0.0.1", server.port), lanes=LANES, queue=REDIS_QUEUE
        )
    else:
        database = request.getfixturevalue("database")
        settings = Settings(database=database, lanes=LANES, queue=DB_QUEUE)
    admin = open_queue(settings.store, "tuitop:contract-admin")
    if request.param == "redis":
        producer = _redis_producer(admin)
    else:
        producer = _database_producer(settings.database)
    view = open_view(settings.store, LANES, "tuitop:contract-view")
    pool = pool_store(settings.store, pool_name=POOL, retry=FAST, socket_timeout=5.0)
    pool.ping()
    made = Store(request.param, settings, admin, view, pool, producer)
    yield made
    made.close()


# --- where everything is -------------------------------------------------------------------


@dataclass(frozen=True)
class Places:
    """How many messages each place holds."""

    queue: int = 0
    """Waiting, in Tuleap's queue and every lane's."""
    held: dict[str, int] = field(default_factory=dict)
    """In each worker's hands (only those holding any)."""
    delayed: int = 0
    dead: int = 0

    @property
    def total(self) -> int:
        return self.queue + sum(self.held.values()) + self.delayed + self.dead


def places(store: Store, *workers: str) -> Places:
    """Counts every place through the seam, each by every reader that says it, and checks
    they agree: the view's snapshot, the admin (dead letters, each worker's held list), the
    pool (waiting and delayed). ``workers``: every worker that may hold messages (the
    snapshot's total held must be theirs)."""
    snapshot = store.view.snapshot(time.time())
    queue = snapshot.queue
    assert not queue.waiting_capped
    assert store.admin.dead_letter_count() == queue.dead_letters
    assert store.pool.holds() == (queue.waiting, queue.delayed)
    assert sum(lane.waiting for lane in snapshot.lanes) == queue.waiting
    shown = {view.id: view.holding for view in snapshot.workers}
    held: dict[str, int] = {}
    for worker in workers:
        count = len(store.admin.held(worker))
        assert shown.get(worker, 0) == count, (worker, shown, count)
        if count:
            held[worker] = count
    assert queue.processing == sum(held.values()), (queue.processing, held)
    return Places(queue.waiting, held, queue.delayed, queue.dead_letters)


def numbers(messages: Sequence[Message]) -> list[int]:
    return [message.payload["n"] for message in messages]


def wait_due(store: Store, within: float = 5.0) -> None:
    """Waits until the next retry is due by the store's clock (never the host's)."""
    deadline = time.monotonic() + within
    while (due := store.pool.due_in()) is not None and due > 0:
        assert time.monotonic() < deadline, f"a retry still {due:.2f} s away"
        time.sleep(min(due, 0.5) + 0.01)


def wait_silent(store: Store, worker: str, within: float = 10.0) -> None:
    """Waits until the pool finds ``worker``'s heartbeat expired."""
    deadline = time.monotonic() + within
    while worker not in store.pool.silent_workers(set()):
        assert time.monotonic() < deadline, f"{worker} still beating"
        time.sleep(0.2)


def take_all(channel: WorkerChannel, worker: str, max_batch: int = 10) -> list[Message]:
    """Takes until a take comes back empty."""
    taken: list[Message] = []
    while (batch := channel.take(worker, max_batch)).messages:
        taken += batch.messages
    return taken


# --- push, take, ack -----------------------------------------------------------------------


def test_a_message_is_queued_then_held_by_its_taker_then_gone_and_always_in_one_place(
    store: Store,
) -> None:
    """The module's promise, step by step: pushed, it waits in the queue; taken, it is in
    that worker's hands and nowhere else; acked, it is done (nowhere)."""
    a = store.channel(A)
    assert places(store, A) == Places()
    store.push(1)
    assert places(store, A) == Places(queue=1)
    batch = a.take(A, 10)
    assert numbers(batch.messages) == [1]
    assert places(store, A) == Places(held={A: 1})
    assert numbers(a.held(A)) == numbers(store.admin.held(A)) == [1]
    assert a.ack(A, batch.messages, StatsBatch()) is True
    assert places(store, A) == Places()
    assert a.held(A) == [] and a.take(A, 10).messages == []


def test_take_takes_the_oldest_first_and_never_more_than_max_batch(store: Store) -> None:
    """``take``: "up to ``max_batch`` messages", and a Batch is "oldest first"."""
    a = store.channel(A)
    store.push(*range(5))
    first = a.take(A, 2)
    assert numbers(first.messages) == [0, 1]
    assert places(store, A) == Places(queue=3, held={A: 2})
    assert numbers(a.take(A, 2).messages) == [2, 3]
    assert numbers(a.take(A, 2).messages) == [4]
    # ``held``: what the worker holds, oldest first, as taken.
    assert numbers(a.held(A)) == [0, 1, 2, 3, 4]
    assert places(store, A) == Places(held={A: 5})


def test_a_take_beside_other_registered_workers_leaves_them_their_share(store: Store) -> None:
    """A documented difference within ``take``'s "up to ``max_batch``": Redis' take script
    takes "no more than a fair share of that list (its depth divided by the registered
    workers)" (tuitop/queue.py, _TAKE_SCRIPT), at least one; the database's take moves
    "up to ``max_batch`` of the oldest waiting rows" (DbQueue.take), whoever else is
    registered."""
    a = store.channel(A)
    store.channel(B)  # registered (it beat), idle
    store.push(*range(6))
    batch = a.take(A, 5)
    if store.kind == "redis":
        assert numbers(batch.messages) == [0, 1, 2]  # 6 waiting / 2 workers
    else:
        assert numbers(batch.messages) == [0, 1, 2, 3, 4]  # max_batch
    assert places(store, A, B).total == 6


def test_a_view_reads_at_most_held_shown_of_what_a_worker_holds(store: Store) -> None:
    """QueueAdmin.held: "oldest first; a worker holds its batch, and a view is shown at
    most HELD_SHOWN of it" (redis.py: "anyone may fill a list: HELD_SHOWN read, not
    all")."""
    a = store.channel(A)
    store.push(*range(HELD_SHOWN + 5))
    assert len(a.take(A, HELD_SHOWN + 5).messages) == HELD_SHOWN + 5
    shown = store.admin.held(A)
    assert numbers(shown) == list(range(HELD_SHOWN))
    assert len(a.held(A)) == HELD_SHOWN + 5  # the worker's own channel reads them all


def test_a_take_on_an_empty_queue_is_an_empty_batch_saying_what_the_worker_holds(
    store: Store,
) -> None:
    """Batch: "when nothing was taken, how many messages the store says it holds already"
    (a reply it never got, stranded in its hands)."""
    a = store.channel(A)
    empty = a.take(A, 10)
    assert (empty.messages, empty.held) == ([], 0)
    store.push(1, 2)
    a.take(A, 10)
    stranded = a.take(A, 10)
    assert (stranded.messages, stranded.held) == ([], 2)
    assert places(store, A) == Places(held={A: 2})


def test_ack_removes_exactly_the_acked_messages(store: Store) -> None:
    a = store.channel(A)
    store.push(0, 1, 2, 3)
    taken = a.take(A, 10).messages
    assert a.ack(A, [taken[1], taken[3]], StatsBatch()) is True
    assert numbers(a.held(A)) == [0, 2]
    assert places(store, A) == Places(held={A: 2})
    assert a.ack(A, [taken[0]], StatsBatch()) is True
    assert numbers(a.held(A)) == [2]


def test_ack_of_a_message_not_in_the_workers_hands_says_false_and_moves_nothing(
    store: Store,
) -> None:
    """``ack``: "False when some were no longer there"; another worker's message is not
    in these hands: it stays in its holder's."""
    a, b = store.channel(A), store.channel(B)
    store.push(1, 2)
    [mine] = a.take(A, 1).messages
    [theirs] = b.take(B, 1).messages
    assert a.ack(A, [theirs], StatsBatch()) is False
    assert places(store, A, B) == Places(held={A: 1, B: 1})
    assert a.ack(A, [mine], StatsBatch()) is True
    assert a.ack(A, [mine], StatsBatch()) is False  # acked already: done, nowhere
    # Some there, some not: those there are acked, and the answer is False.
    store.push(3)
    [again] = a.take(A, 1).messages
    assert a.ack(A, [again, theirs], StatsBatch()) is False
    assert places(store, A, B) == Places(held={B: 1})


def test_ack_and_take_acks_first_then_takes(store: Store) -> None:
    """``ack_and_take``: ":meth:`ack`, then :meth:`take`, in that order"."""
    a = store.channel(A)
    store.push(1, 2, 3)
    first = a.take(A, 1)
    all_there, batch = a.ack_and_take(A, first.messages, StatsBatch(), 5)
    assert all_there is True and numbers(batch.messages) == [2, 3]
    assert places(store, A) == Places(held={A: 2})
    all_there, batch = a.ack_and_take(A, first.messages, StatsBatch(), 5)
    assert all_there is False and batch.messages == [] and batch.held == 2


# --- failures and retries ------------------------------------------------------------------


def test_a_retryable_failure_waits_in_the_delayed_retries_until_due(store: Store) -> None:
    """``fail``: into the delayed retries, atomically; ``move_due`` moves only those whose
    time has come, by the store's clock; ``due_in`` says when (RetryPolicy: the first
    return waits ``base_delay``)."""
    a = store.channel(A, retry=SLOW)
    store.push(1)
    [message] = a.take(A, 1).messages
    assert a.fail(A, message, "boom") == "retried"
    assert places(store, A) == Places(delayed=1)
    due = store.pool.due_in()
    assert due is not None and SLOW.delay(1) - 10 < due <= SLOW.delay(1)
    assert store.pool.move_due() == 0
    assert places(store, A) == Places(delayed=1)
    assert a.take(A, 10).messages == []


def test_a_due_retry_is_moved_to_the_head_of_the_queue_with_one_more_try(store: Store) -> None:
    """``move_due``: "to the head of the queue" — taken before what waited meanwhile —
    and the message carries one try more (its ``queued_total``)."""
    a = store.channel(A)
    store.push(1, 2)
    [first] = a.take(A, 1).messages
    assert first.queued_total == 0
    assert a.fail(A, first, "boom") == "retried"
    store.push(3)
    assert places(store, A) == Places(queue=2, delayed=1)
    wait_due(store)
    assert store.pool.move_due() == 1
    assert places(store, A) == Places(queue=3)
    taken = take_all(a, A)
    assert numbers(taken) == [1, 2, 3]
    assert [message.queued_total for message in taken] == [1, 0, 0]


def test_failures_past_max_requeues_end_in_the_dead_letters_with_the_reason(
    store: Store,
) -> None:
    """RetryPolicy: "how many returns it gets"; past them the message is given up, to the
    dead letters with why (the delay doubling at each return)."""
    policy = RetryPolicy(base_delay=0.1, max_requeues=2)
    a = store.channel(A, retry=policy)
    store.push(1)
    outcomes = []
    for tries in range(1, policy.max_requeues + 2):
        [message] = take_all(a, A)
        assert message.queued_total == tries - 1
        outcomes.append(a.fail(A, message, f"boom {tries}", traceback="Traceback: here"))
        if outcomes[-1] == "retried":
            due = store.pool.due_in()
            assert due is not None and due <= policy.delay(tries)
            wait_due(store)
            assert store.pool.move_due() == 1
    assert outcomes == ["retried", "retried", "dead"]
    assert places(store, A) == Places(dead=1)
    [letter] = store.admin.dead_letters()
    assert letter.reason == "boom 3; given up after 3 tries"
    assert (letter.tries, letter.topic, letter.worker) == (2, TOPIC, A)
    assert letter.traceback == "Traceback: here"


def test_a_failure_not_retryable_is_dead_lettered_at_once(store: Store) -> None:
    a = store.channel(A)
    store.push(1)
    [message] = a.take(A, 1).messages
    assert a.fail(A, message, "bad payload", retryable=False) == "dead"
    assert places(store, A) == Places(dead=1)
    [letter] = store.admin.dead_letters()
    assert (letter.reason, letter.tries, letter.worker) == ("bad payload", 0, A)


def test_a_failure_with_a_payload_retries_the_replacement(store: Store) -> None:
    """``fail``: "``payload`` (when not None) is what to retry instead"."""
    a = store.channel(A)
    store.push(1)
    [message] = a.take(A, 1).messages
    assert a.fail(A, message, "half done", payload={"n": 1, "left": ["b@x"]}) == "retried"
    wait_due(store)
    assert store.pool.move_due() == 1
    [retried] = take_all(a, A)
    assert retried.payload == {"n": 1, "left": ["b@x"]} and retried.queued_total == 1


@pytest.mark.parametrize("past_the_tries", [False, True], ids=["permanent", "past-the-tries"])
def test_a_dead_letter_keeps_the_replacement_payload(store: Store, past_the_tries: bool) -> None:
    """``fail``: "``payload`` (when not None) is what to retry instead" — and a replay is a
    retry: handlers.PermanentFailure's payload "is what to keep for replay" (a
    notification keeps only the mails the relay refused: those sent are not sent again).
    Given up past its tries (RetryLater's payload) or at once (PermanentFailure's), the
    dead letter holds the replacement, and a replay runs it."""
    a = store.channel(A)
    store.push(1, queued_total=MAX_REQUEUES if past_the_tries else 0)
    [message] = a.take(A, 1).messages
    left = {"n": 1, "left": ["refused@example.com"]}
    assert a.fail(A, message, "550", retryable=past_the_tries, payload=left) == "dead"
    [letter] = store.admin.dead_letters()
    assert store.admin.replay(letter)
    [replayed] = a.take(A, 1).messages
    assert replayed.payload == left


@pytest.mark.parametrize(
    "left",
    [
        {"n": 1, "text": "100% %s %d %% %(x)s"},  # what a %s placeholder must not read
        {"n": 1, "text": "é😀\u2028</script>\"'\\", "deep": [[[[[[[[[[["x"]]]]]]]]]]]},
        {"n": 1, "big": "x" * 200_000},
    ],
    ids=["percent-signs", "hostile-text", "big"],
)
def test_a_dead_letter_keeps_a_hostile_replacement_payload_exactly(
    store: Store, left: dict[str, object]
) -> None:
    """The dead letter's replacement payload (a %s placeholder in the database's INSERT …
    SELECT) is written as given: percent signs, quotes, non-ASCII, nesting, a big one —
    and its reason, worker and try count are the ones said, not shifted by a parameter."""
    a = store.channel(A)
    store.push(1, queued_total=1)
    [message] = a.take(A, 1).messages
    assert a.fail(A, message, "550 %s", retryable=False, payload=left) == "dead"
    [letter] = store.admin.dead_letters()
    assert letter.reason == "550 %s" and letter.worker == A and letter.tries == 1
    assert store.admin.replay(letter)
    [replayed] = a.take(A, 1).messages
    assert replayed.payload == left


def test_a_failure_of_a_message_no_longer_held_is_gone_and_writes_nothing(
    store: Store,
) -> None:
    """``fail``: "``'gone'`` (no longer in its hands)"."""
    a, b = store.channel(A), store.channel(B)
    store.push(1)
    [message] = a.take(A, 1).messages
    assert b.fail(B, message, "not mine") == "gone"
    assert places(store, A, B) == Places(held={A: 1})
    assert a.ack(A, [message], StatsBatch())
    assert a.fail(A, message, "acked already") == "gone"
    assert places(store, A, B) == Places()


# --- giving back ---------------------------------------------------------------------------


def test_give_back_returns_unstarted_messages_to_the_head_in_order_tries_unchanged(
    store: Store,
) -> None:
    """``give_back``: "in order, to the head of ``source`` with their try count
    unchanged" — taken next, before what waited behind them."""
    a = store.channel(A)
    store.push(0, 1, 2, 3, 4)
    batch = a.take(A, 4)
    assert numbers(batch.messages) == [0, 1, 2, 3]
    a.give_back(A, batch.messages[1:], batch.source)
    assert places(store, A) == Places(queue=4, held={A: 1})
    b = store.channel(B)
    again = take_all(b, B)
    assert numbers(again) == [1, 2, 3, 4]
    assert [message.queued_total for message in again] == [0, 0, 0, 0]
    assert numbers(a.held(A)) == [0]


def test_give_back_of_a_message_no_longer_held_leaves_it_where_it_is(store: Store) -> None:
    """``give_back``: "one no longer in its hands is left where it is" — never doubled."""
    a = store.channel(A)
    store.push(1, 2)
    batch = a.take(A, 10)
    assert a.ack(A, batch.messages[:1], StatsBatch())
    a.give_back(A, batch.messages, batch.source)  # the first is done: only the second goes
    assert places(store, A) == Places(queue=1)
    assert numbers(take_all(a, A)) == [2]


# --- recovering a gone worker --------------------------------------------------------------


def test_recover_moves_what_a_gone_worker_held_back_with_a_try_more_or_to_the_dead_letters(
    store: Store,
) -> None:
    """``recover``: "Moves what ``worker_id`` held back (delayed, one try more) or to the
    dead letters, and forgets the worker (its lease, its heartbeat), atomically"."""
    a = store.channel(A)
    store.push(1, 2)
    store.push(3, queued_total=MAX_REQUEUES)  # its last try: a return is one too many
    held = a.take(A, 10).messages
    assert numbers(held) == [1, 2, 3]
    recovery = store.pool.recover(A, "worker died (SIGKILL)", traceback="killed here")
    assert recovery == Recovery(requeued=2, dead_lettered=1)
    assert recovery.outcomes == ((TOPIC, "retried"), (TOPIC, "retried"), (TOPIC, "dead"))
    assert places(store, A) == Places(delayed=2, dead=1)
    [letter] = store.admin.dead_letters()
    assert letter.reason == f"worker died (SIGKILL); given up after {MAX_REQUEUES + 1} tries"
    assert (letter.traceback, letter.tries) == ("killed here", MAX_REQUEUES)
    # Its lease went with it: a worker thawed after a freeze knows they are elsewhere.
    assert a.leased(A) is False
    assert a.beat(A, beat_of(A), ttl=60.0) is False
    wait_due(store)
    assert store.pool.move_due() == 2
    back = take_all(store.channel(B), B)
    assert numbers(back) == [1, 2] and [m.queued_total for m in back] == [1, 1]


def test_a_recovered_worker_thawed_later_finds_nothing_to_ack_fail_or_give_back(
    store: Store,
) -> None:
    """After a recovery, whatever the worker still does with what it held is a no-op:
    nothing lost, nothing doubled; a second recovery finds nothing."""
    a = store.channel(A)
    store.push(1, 2, 3)
    batch = a.take(A, 10)
    assert store.pool.recover(A, "silent").total == 3
    assert store.pool.recover(A, "silent again") == Recovery(0, 0)
    assert a.ack(A, batch.messages[:1], StatsBatch()) is False
    assert a.fail(A, batch.messages[1], "late") == "gone"
    a.give_back(A, batch.messages[2:], batch.source)
    assert places(store, A) == Places(delayed=3)


def test_recover_unless_beating_leaves_a_beating_worker_alone(store: Store) -> None:
    """``recover``: "with ``unless_beating`` only if its heartbeat expired (checked in the
    same transaction)"."""
    a = store.channel(A)
    store.push(1)
    a.take(A, 1)
    assert store.pool.recover(A, "silent?", unless_beating=True) == Recovery(0, 0)
    assert places(store, A) == Places(held={A: 1})
    assert a.leased(A) is True


def test_a_worker_killed_at_the_time_limit_has_only_that_job_given_up(store: Store) -> None:
    """TimedOut: "the job a worker was killed for, at the time limit: what a recovery gives
    up at once ... the rest it holds going back as after any death"."""
    a = store.channel(A)
    store.push(1, 2, 3)
    held = a.take(A, 10).messages
    running = held[1]
    recovery = store.pool.recover(
        A, "killed at the time limit", timed_out=TimedOut(job_key(running))
    )
    assert recovery == Recovery(requeued=2, dead_lettered=1)
    assert recovery.outcomes == ((TOPIC, "retried"), (TOPIC, "dead"), (TOPIC, "retried"))
    assert places(store, A) == Places(delayed=2, dead=1)
    [letter] = store.admin.dead_letters()
    assert letter.reason == "killed at the time limit" + NOT_RETRIED_PAST_LIMIT
    assert letter.tries == 0  # given up at its first try: no retry past the time limit


def test_a_timed_out_job_of_a_topic_retried_past_the_limit_goes_back(store: Store) -> None:
    """TimedOut.retried: a topic whose jobs are retried past the time limit is not given
    up: everything goes back."""
    a = store.channel(A)
    store.push(1, 2)
    running = a.take(A, 10).messages[0]
    timed_out = TimedOut(job_key(running), retried=lambda topic: topic == TOPIC)
    assert store.pool.recover(A, "killed at the limit", timed_out=timed_out) == Recovery(2, 0)
    assert places(store, A) == Places(delayed=2)


def test_a_time_limit_kill_gives_up_one_job_only_were_two_alike(store: Store) -> None:
    """TimedOut.given_up: "one only, were two alike (the same bytes twice in a Redis
    list: either is the job)" — Tuleap queues an event twice; one ran past the limit."""
    a = store.channel(A)
    raw = encode(TOPIC, {"n": 5}, enqueue_ts=1_764_237_600.5)
    store.admin.push(raw)
    store.admin.push(raw)
    running, _ = a.take(A, 10).messages
    recovery = store.pool.recover(A, "killed", timed_out=TimedOut(job_key(running)))
    assert recovery == Recovery(requeued=1, dead_lettered=1)
    assert places(store, A) == Places(delayed=1, dead=1)


def test_the_pool_finds_a_silent_worker_and_recovers_what_it_held(store: Store) -> None:
    """``silent_workers``: "Registered workers not in ``ours`` whose heartbeat expired";
    ``recover(unless_beating=True)`` then moves what it held."""
    a, b = store.channel(A), store.channel(B)
    store.push(1, 2)
    a.take(A, 1)
    b.take(B, 1)
    assert a.beat(A, beat_of(A), ttl=1.0)  # its last beat: alive for a second
    wait_silent(store, A)
    assert store.pool.silent_workers(set()) == [A]  # B beats (for a minute)
    assert store.pool.silent_workers({A}) == []  # ours: the pool sees to its own
    assert store.pool.recover(A, "stopped beating", unless_beating=True) == Recovery(1, 0)
    assert places(store, A, B) == Places(held={B: 1}, delayed=1)
    assert store.pool.silent_workers(set()) == []


def test_what_a_recovered_worker_takes_before_it_dies_is_found_again(store: Store) -> None:
    """WorkerChannel: "nothing is lost then (what was not written is written again later,
    or recovered by the pool)". A worker frozen past its heartbeat is recovered; thawed,
    it takes once more (its take does not check its lease) and is killed before its next
    beat: what it took is in its hands, and the pool must find it there."""
    a = store.channel(A)
    store.push(1)
    a.take(A, 1)
    assert store.pool.recover(A, "stopped beating").total == 1
    store.push(2)
    assert numbers(a.take(A, 1).messages) == [2]  # thawed, then killed: no beat
    assert numbers(store.admin.held(A)) == [2]
    assert store.pool.silent_workers(set()) == [A]
    if store.kind == "redis":
        # A documented difference: Redis' view reads the lists of registered workers only
        # (a fixed cost; a SCAN a refresh would not be): the pool's scan finds this one.
        assert store.pool.holds() == (0, 1)
    else:
        assert places(store, A) == Places(held={A: 1}, delayed=1)
    assert store.pool.recover(A, "stopped beating", unless_beating=True) == Recovery(1, 0)
    assert places(store, A) == Places(delayed=2)


def test_a_message_reaching_a_recovered_workers_pending_wait_is_found_again(
    store: Store,
) -> None:
    """The same promise with no move of the worker at all: it is frozen while it waits
    (an idle worker waits block_timeout, 30 s, longer than a heartbeat's life, 10 s), is
    recovered as silent, and a message is pushed before its wait ends. ``wait_takes``
    says where that message goes: Redis' BLMOVE, still pending in the server, moves it
    into the frozen worker's hands; the database's wait takes nothing (it stays queued).
    Either way the pool must be able to find it: queued, or held by a silent worker."""
    a = store.channel(A)
    waited: list[Batch] = []
    frozen = threading.Thread(target=lambda: waited.append(a.wait(A, 2.0)))
    frozen.start()
    time.sleep(0.3)  # blocked in its wait
    assert store.pool.recover(A, "stopped beating") == Recovery(0, 0)
    store.push(1)
    frozen.join(10)
    if a.wait_takes:  # Redis: in the frozen worker's hands (a reply it never reads)
        assert numbers(waited[0].messages) == [1]
        assert numbers(store.admin.held(A)) == [1]
        assert store.pool.silent_workers(set()) == [A]
        assert store.pool.recover(A, "stopped beating", unless_beating=True).total == 1
        assert places(store, A) == Places(delayed=1)
    else:  # the database: still queued, for any worker
        assert waited[0].messages == []
        assert places(store, A) == Places(queue=1)


def test_hand_back_gives_tuleaps_queue_everything_but_what_live_workers_hold(
    store: Store,
) -> None:
    """``hand_back``: "Gives Tuleap's queue everything only a tuitop reads" — what gone
    workers held, every lane's messages, every retry, due or not; never what a worker
    that still beats holds."""
    gone, live = store.channel(A), store.channel(B)
    slow = store.channel(f"{POOL}/2#103", retry=SLOW)
    store.push(1, 2, 3)
    gone.take(A, 1)
    live.take(B, 1)
    [retry] = slow.take(f"{POOL}/2#103", 1).messages
    assert slow.fail(f"{POOL}/2#103", retry, "later") == "retried"  # due in a minute
    store.push(4, topic=JIRA)
    assert gone.take(A, 10).messages == []  # routed to its lane
    assert gone.beat(A, beat_of(A), ttl=1.0)
    wait_silent(store, A)
    assert places(store, A, B) == Places(queue=1, held={A: 1, B: 1}, delayed=1)
    handed = store.admin.hand_back("tuitop stops: Tuleap's workers take over")
    assert handed.recovered == 1
    assert handed.lanes == {LONG: 1}
    assert handed.retries == 2  # the retry waiting, and what A held (retried, one try more)
    assert places(store, A, B) == Places(queue=3, held={B: 1})
    snapshot = store.view.snapshot(time.time())
    assert {view.name: view.waiting for view in snapshot.lanes}[DEFAULT_LANE] == 3


# --- dead letters --------------------------------------------------------------------------


def _dead_letter(store: Store, channel: WorkerChannel, worker: str, *ns: int) -> None:
    for n in ns:
        store.push(n)
        [message] = channel.take(worker, 1).messages
        assert channel.fail(worker, message, f"dead {n}", retryable=False) == "dead"


def test_dead_letters_are_listed_newest_first_with_why(store: Store) -> None:
    a = store.channel(A)
    _dead_letter(store, a, A, 1, 2, 3)
    letters = store.admin.dead_letters()
    assert [letter.reason for letter in letters] == ["dead 3", "dead 2", "dead 1"]
    assert [letter.topic for letter in letters] == [TOPIC] * 3
    assert [letter.reason for letter in store.admin.dead_letters(1, 1)] == ["dead 2"]
    assert store.admin.dead_letter_count() == 3
    assert places(store, A) == Places(dead=3)


def test_replay_puts_a_dead_letter_back_at_the_end_of_the_queue_once_and_fresh(
    store: Store,
) -> None:
    """``replay``: "Puts a dead letter back at the end of the queue, fresh; False when
    gone"."""
    a = store.channel(A)
    store.push(1, queued_total=2)
    [message] = a.take(A, 1).messages
    assert a.fail(A, message, "dead", retryable=False) == "dead"
    store.push(2)
    [letter] = store.admin.dead_letters()
    assert store.admin.replay(letter) is True
    assert places(store, A) == Places(queue=2)
    assert store.admin.replay(letter) is False  # replayed: gone from the dead letters
    assert places(store, A) == Places(queue=2)
    taken = take_all(a, A)
    assert numbers(taken) == [2, 1]  # at the end: after what waited
    assert taken[1].queued_total == 0  # fresh: every try again


def test_replay_all_replays_every_letter_once_oldest_first(store: Store) -> None:
    """``replay_all``: "every dead letter there is now, oldest first; how many"."""
    a = store.channel(A)
    _dead_letter(store, a, A, 1, 2, 3)
    assert store.admin.replay_all() == 3
    assert places(store, A) == Places(queue=3)
    assert store.admin.replay_all() == 0
    assert numbers(take_all(a, A)) == [1, 2, 3]


def test_purge_deletes_every_dead_letter_and_says_how_many(store: Store) -> None:
    a = store.channel(A)
    _dead_letter(store, a, A, 1, 2)
    store.push(3)
    assert store.admin.purge_dead_letters() == 2
    assert places(store, A) == Places(queue=1)
    assert store.admin.dead_letters() == [] and store.admin.purge_dead_letters() == 0


# --- lanes ---------------------------------------------------------------------------------


def test_a_lanes_message_is_taken_only_by_a_worker_serving_that_lane(store: Store) -> None:
    """WorkerChannel: a worker takes "from the lanes ``serves``"; a default-lane worker
    moves a lane's message to that lane (tuitop/lanes.py) and never takes it."""
    default = store.channel(A)
    lane = store.channel(B, serves=(LONG, DEFAULT_LANE))
    store.push(1, topic=JIRA)
    store.push(2)
    # A take that found only another lane's messages moved them and may come back empty
    # though more wait behind (Redis' take pops a fair share, and ends; the database's
    # looks ROUTING_ROUNDS times): the worker takes again after its wait. Five takes.
    taken = [m for _ in range(5) for m in default.take(A, 10).messages]
    assert numbers(taken) == [2]
    snapshot = store.view.snapshot(time.time())
    waiting = {view.name: view.waiting for view in snapshot.lanes}
    assert waiting[LONG] == 1 and waiting[DEFAULT_LANE] == 0
    assert places(store, A, B) == Places(queue=1, held={A: 1})
    batch = lane.take(B, 10)
    assert numbers(batch.messages) == [1] and batch.messages[0].topic == JIRA
    assert places(store, A, B) == Places(held={A: 1, B: 1})
    # Given back, it goes back to its lane ("the head of ``source``"), not to Tuleap's.
    lane.give_back(B, batch.messages, batch.source)
    snapshot = store.view.snapshot(time.time())
    assert {view.name: view.waiting for view in snapshot.lanes}[LONG] == 1
    assert default.take(A, 10).messages == []
    assert numbers(lane.take(B, 10).messages) == [1]


def test_a_lane_worker_takes_its_lane_first_then_helps_the_default_lane(store: Store) -> None:
    """lanes.py: "a lane's workers take from their lane first, then help the default lane
    when their own is empty"."""
    default = store.channel(A)
    lane = store.channel(B, serves=(LONG, DEFAULT_LANE))
    store.push(1, topic=JIRA)
    assert default.take(A, 10).messages == []  # moved to its lane, not taken
    store.push(2)
    assert places(store, A, B) == Places(queue=2)
    first = lane.take(B, 10)
    assert [m.topic for m in first.messages] == [JIRA]
    second = lane.take(B, 10)
    assert numbers(second.messages) == [2]
    assert places(store, A, B) == Places(held={B: 2})


# --- duplicates and races ------------------------------------------------------------------


def test_the_same_message_pushed_twice_is_two_jobs(store: Store) -> None:
    """Tuleap often queues one event twice (two pushes to a repository): two jobs, each
    delivered, acked and failed on its own."""
    a = store.channel(A)
    raw = encode(TOPIC, {"n": 7}, enqueue_ts=1_764_237_600.5)
    store.admin.push(raw)
    store.admin.push(raw)
    assert places(store, A) == Places(queue=2)
    one, two = a.take(A, 10).messages
    assert one.payload == two.payload == {"n": 7}
    assert places(store, A) == Places(held={A: 2})
    assert a.ack(A, [one], StatsBatch()) is True
    assert places(store, A) == Places(held={A: 1})
    assert a.fail(A, two, "boom", retryable=False) == "dead"
    assert places(store, A) == Places(dead=1)


def test_a_message_taken_by_one_worker_is_never_taken_by_another(store: Store) -> None:
    a, b = store.channel(A), store.channel(B)
    store.push(1, 2, 3)
    mine = numbers(a.take(A, 1).messages)
    theirs = numbers(take_all(b, B))
    assert mine == [1] and theirs == [2, 3]
    assert places(store, A, B) == Places(held={A: 1, B: 2})


def test_two_workers_taking_at_once_share_no_message_and_lose_none(store: Store) -> None:
    """Two threads, each its own channel (one per thread), drain the queue at once: every
    message taken once, by one of them."""
    channels = {A: store.channel(A), B: store.channel(B)}
    total = 80
    store.push(*range(total))
    got: dict[str, list[int]] = {A: [], B: []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def drain(worker: str) -> None:
        try:
            start.wait()
            channel = channels[worker]
            while batch := channel.take(worker, 3).messages:
                got[worker] += numbers(batch)
                assert channel.ack(worker, batch, StatsBatch())
        except BaseException as error:  # said below
            errors.append(error)

    threads = [threading.Thread(target=drain, args=(worker,)) for worker in got]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    both = got[A] + got[B]
    assert sorted(both) == list(range(total))
    assert len(both) == total  # none twice
    assert places(store, A, B) == Places()


# --- hostile input -------------------------------------------------------------------------


def test_an_unreadable_message_is_taken_with_its_problem_and_dead_lettered(store: Store) -> None:
    """message.py: "A value that is not a usable message still decodes, with ``problem``
    saying why, so the worker can dead-letter it with that reason instead of crashing".
    Each backend gets what its producers can write: in Redis any bytes (here a value
    that is no JSON at all), in the database a payload Tuleap's worker cannot read
    (1e400: its JSON column takes it, PHP's json_decode gives INF, which it cannot
    encode again)."""
    a = store.channel(A)
    if store.kind == "redis":
        store.admin.push(b"\xff not json at all {")
    else:
        store.producer(TOPIC, '{"score": 1e400}')
    store.push(2)
    unreadable, fine = a.take(A, 10).messages
    assert unreadable.problem is not None and fine.problem is None
    assert places(store, A) == Places(held={A: 2})
    # Retryable or not, it is given up at once: it could never run.
    assert a.fail(A, unreadable, f"unusable message: {unreadable.problem}") == "dead"
    [letter] = store.admin.dead_letters()
    assert letter.reason.startswith("unusable message: ")
    assert places(store, A) == Places(held={A: 1}, dead=1)
    assert a.ack(A, [fine], StatsBatch())
    # Replayed, it comes back as it was (and would be given up again).
    assert store.admin.replay(letter) is True
    [again] = a.take(A, 10).messages
    assert again.problem is not None


def test_a_message_of_an_unknown_topic_is_a_message_like_any_other(store: Store) -> None:
    """No store knows the handlers: a topic nobody handles is taken as any other; the
    worker dead-letters it, not retryable (worker.py: "unknown topic")."""
    a = store.channel(A)
    store.producer("tuleap.no.such.topic", '{"n":1}')
    [message] = a.take(A, 1).messages
    assert (message.topic, message.problem, message.payload) == (
        "tuleap.no.such.topic",
        None,
        {"n": 1},
    )
    assert a.fail(A, message, "unknown topic", retryable=False) == "dead"
    assert store.admin.dead_letters()[0].topic == "tuleap.no.such.topic"


def test_a_push_of_a_value_that_is_not_a_message(store: Store) -> None:
    """QueueAdmin.push queues "one message (tuitop's wire format)". The backends differ on
    what is not one, each as documented: Redis' push is Tuleap's LPUSH of the value as it
    is (queue.py: "LPUSH one message, as Tuleap's front end does"): it is queued, and
    dead-lettered when taken; the database's push writes a row's columns from the message
    (DbQueue.push: "``raw`` is tuitop's wire format (its topic, payload, enqueue time and
    tries)"), and a value with none refuses with ValueError, nothing written."""
    a = store.channel(A)
    if store.kind == "redis":
        store.admin.push(b"[1, 2]")
        [message] = a.take(A, 1).messages
        assert message.problem == "not a JSON object but list"
        assert a.fail(A, message, "unusable") == "dead"
        assert places(store, A) == Places(dead=1)
    else:
        with pytest.raises(ValueError, match="not a message tuitop can queue"):
            store.admin.push(b"[1, 2]")
        assert places(store, A) == Places()


# --- the pool's name, its mailbox, a producer's marker -------------------------------------


def test_a_pools_name_is_held_by_one_token_at_a_time(store: Store) -> None:
    """``claim_name``: "Takes (or renews for ``ttl`` s) the pool's name, unless another
    holds it"; ``release_name``: "if still ``token``'s"."""
    other = store.pool_store()
    assert store.pool.claim_name(POOL, "first", 60)
    assert store.pool.claim_name(POOL, "first", 60)  # renewed
    assert not other.claim_name(POOL, "second", 60)
    assert store.pool.name_owner(POOL) == other.name_owner(POOL) == "first"
    other.release_name(POOL, "second")  # not its own: nothing
    assert store.pool.name_owner(POOL) == "first"
    store.pool.release_name(POOL, "first")
    assert store.pool.name_owner(POOL) == ""
    assert other.claim_name(POOL, "second", 60)


def test_a_command_is_taken_once_oldest_first_or_withdrawn_never_both(store: Store) -> None:
    """``send_command``/``take_commands``: "each taken once", "oldest first";
    ``withdraw_command``: "True when it was there (the pool never saw it)"; ``reply``
    and ``wait_reply``: the reply reaches its sender."""
    store.admin.send_command(POOL, b'{"id":"c1"}')
    store.admin.send_command(POOL, b'{"id":"c2"}')
    store.admin.send_command(POOL, b'{"id":"c3"}')
    assert store.admin.withdraw_command(POOL, b'{"id":"c3"}') is True
    assert store.pool.take_commands(POOL, 10) == [b'{"id":"c1"}', b'{"id":"c2"}']
    assert store.pool.take_commands(POOL, 10) == []
    assert store.admin.withdraw_command(POOL, b'{"id":"c1"}') is False  # taken
    store.pool.reply("c1", b'{"ok":true}')
    assert store.admin.wait_reply("c1", 2.0) == b'{"ok":true}'
    assert store.admin.wait_reply("c2", 0.2) is None


def test_a_marked_push_is_queued_and_known_to_have_happened(store: Store) -> None:
    """``push_marked``: "As ``push``, with a marker of ``token`` in the same
    transaction"; ``was_pushed``: "Whether the push marked ``token`` happened"."""
    store.channel(A)
    assert store.admin.was_pushed("token-1") is False
    store.admin.push_marked(encode(TOPIC, {"n": 1}), "token-1")
    assert store.admin.was_pushed("token-1") is True
    assert store.admin.was_pushed("token-2") is False
    assert places(store, A) == Places(queue=1)
