"""The seam between tuitop and where its queue lives: Redis, or Tuleap's database.

Everything above this seam — the worker's loop, the pool's arbiter, the UI, the CLI — is
the same for both; everything below it keeps one promise: at every moment a message is in
exactly one place (the queue, one worker's hands, the delayed retries, the dead letters),
or it is done, and every move between them is atomic.

Two protocols, one per side of a process:

* :class:`WorkerChannel` — one worker's conversation with the store: take, ack, give
  back, fail, beat. One per thread (a worker has one for its loop, one for its heartbeat).
* :class:`PoolStore` — what a pool does on the store: its name and heartbeat, the config it
  publishes, recovering what gone workers held, moving due retries, the housekeeping.

The plain values both sides share (a batch taken, what a recovery did, a dead letter, the
retry policy) are defined here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tuitop.backends.retry import MAX_REQUEUES as MAX_REQUEUES
from tuitop.backends.retry import RetryPolicy as RetryPolicy
from tuitop.beats import PoolBeat, WorkerBeat
from tuitop.config import StoreSettings
from tuitop.message import Message, job_key
from tuitop.outcome import Outcome
from tuitop.snapshot import Snapshot
from tuitop.stats import StatsBatch, WindowStats

CONNECT_TIMEOUT = 5.0
"""Seconds a connection to either store may take to be made."""
COMMAND_TTL = 60
"""Seconds an unread command to a pool (:mod:`tuitop.control`), and a reply, are kept: a
pool gone for longer must not obey an old order when it comes back."""
HELD_SHOWN = 20
"""The most of a worker's held messages an admin reads (:meth:`QueueAdmin.held`)."""


NOT_RETRIED_PAST_LIMIT = (
    "; not retried: a job past its time limit is not run again, as in Tuleap "
    "($tuitop_timeout_retries names the lanes and topics that are)"
)
"""What the reason of a job killed at the time limit and given up says besides."""


@dataclass(frozen=True)
class TimedOut:
    """The job a worker was killed for, at the time limit: what a recovery gives up at
    once (not retried, unless ``retried`` says so of its topic), the rest it holds
    going back as after any death."""

    job: int
    """The message's :func:`~tuitop.message.job_key` (0: not known, none is given
    up)."""
    retried: Callable[[str], bool] = field(default=lambda topic: False, compare=False)
    """Whether a job of a topic past the time limit is retried (the settings')."""

    def given_up(self, messages: Sequence[Message]) -> int:
        """Which of ``messages`` (all the worker held) to give up: the index of the one
        whose key is the job's — one only, were two alike (the same bytes twice in a
        Redis list: either is the job) — or -1 (none, or its topic is retried)."""
        for index, message in enumerate(messages):
            if self.job and job_key(message) == self.job:
                return -1 if self.retried(message.topic) else index
        return -1


def recovery_fates(
    held: Sequence[Message], reason: str, timed_out: TimedOut | None
) -> list[tuple[str, bool]]:
    """For each message a gone worker held, what its recovery says and whether it may be
    retried: every one with ``reason``, but the job it was killed for at the time limit,
    which is given up with why."""
    cut = timed_out.given_up(held) if timed_out is not None else -1
    return [
        (reason + NOT_RETRIED_PAST_LIMIT, False) if index == cut else (reason, True)
        for index in range(len(held))
    ]


@dataclass(frozen=True)
class Batch:
    """What a worker took, oldest first, and where from (a lane's source, given back
    there); when nothing was taken, how many messages the store says it holds already
    (``held``: a reply it never got, stranded in its hands)."""

    messages: list[Message]
    source: str
    held: int = 0
    routed: bool = False
    """A wait moved the message it got to its lane's list (Redis): take again."""


@dataclass(frozen=True)
class Recovery:
    """What recovering a worker's messages did."""

    requeued: int
    dead_lettered: int
    outcomes: tuple[tuple[str, Outcome], ...] = field(default=(), compare=False)
    """(topic, RETRIED or DEAD) of each message, the oldest first: what the
    pool counts for its metrics (the counts above say what a recovery did; equal counts
    are equal recoveries)."""

    @property
    def total(self) -> int:
        return self.requeued + self.dead_lettered


@dataclass(frozen=True)
class HandBack:
    """What handing the queue back to Tuleap's workers moved."""

    recovered: int
    """Messages tuitop's workers held (now retried from Tuleap's queue, or dead letters)."""
    lanes: dict[str, int]
    """Messages moved from each lane's list (Redis) or ``queue_name`` (the database)."""
    retries: int
    """Retries that were waiting their time, now at the head of Tuleap's queue."""


@dataclass(frozen=True)
class DeadLetter:
    """A message given up, with why. ``entry`` is how the store finds it again (to replay
    or delete it): the stored value in Redis, the row's number in the database."""

    message: bytes
    reason: str
    worker: str
    at: float
    tries: int
    topic: str
    traceback: str
    entry: bytes


@dataclass(frozen=True)
class LeftBehind:
    """Messages a worker that is not tuitop's left where only it would take them back
    (Tuleap's own Redis workers, stopped for good)."""

    worker_id: str
    number: int
    messages: int
    where: str = ""
    """Where they are, for an operator (a Redis list's name)."""
    pid: int | None = None
    """The pid of Tuleap's worker of that number, when one runs on this host."""


TULEAP_HOLD_LIMIT = 16 * 60.0
"""Tuleap's worker stops a task at 15 minutes and removes its message: what one of its
workers holds unchanged for longer (a minute's margin) belongs to a worker that is gone."""

ErrorTypes = tuple[type[BaseException], ...]


class WorkerChannel(Protocol):
    """One worker's conversation with the store. Every method raises one of ``errors``
    when the store does not answer; nothing is lost then (what was not written is written
    again later, or recovered by the pool)."""

    @property
    def inbox(self) -> str:
        """The source every message arrives in (Tuleap's queue): where what a worker holds
        and never started goes back."""

    def start(self, worker_id: str) -> None:
        """Checks the store answers and takes the worker's lease (see :meth:`leased`)."""

    def ping(self) -> None: ...

    def take(self, worker_id: str, max_batch: int) -> Batch:
        """Moves up to ``max_batch`` messages into the worker's hands without waiting."""

    @property
    def wait_takes(self) -> bool:
        """Whether :meth:`wait` takes the message it waited for (Redis' BLMOVE on Tuleap's
        list); False: it only says when to take again (the database's doorbell)."""

    def wait(self, worker_id: str, timeout: float) -> Batch:
        """Waits up to ``timeout`` s for work, never polling: a message taken (Redis blocks
        on Tuleap's list), or none (nothing came, or the pool's doorbell rang: the caller
        takes again)."""

    def ack(self, worker_id: str, messages: Sequence[Message], stats: StatsBatch) -> bool:
        """Removes finished messages from the worker's hands and adds ``stats``, in one
        round trip; False when some were no longer there (recovered meanwhile)."""

    def ack_and_take(
        self, worker_id: str, messages: Sequence[Message], stats: StatsBatch, max_batch: int
    ) -> tuple[bool, Batch]:
        """:meth:`ack`, then :meth:`take`, in that order (in one round trip where the store
        allows it): whether every ack found its message, and what was taken. When it
        raises, the acks may or may not have been made."""

    def give_back(self, worker_id: str, messages: Sequence[Message], source: str) -> None:
        """Returns messages taken and never started, in order, to the head of ``source``
        with their try count unchanged; one no longer in its hands is left where it is."""

    def fail(
        self,
        worker_id: str,
        message: Message,
        reason: str,
        *,
        traceback: str = "",
        retryable: bool = True,
        payload: Any = None,
        outcome: Outcome = Outcome.FAILED,
    ) -> Outcome:
        """Moves a failed message out of the worker's hands into the delayed retries or
        the dead letters, atomically; ``payload`` (when not None) is what to retry instead.
        Returns where it went (:meth:`RetryPolicy.decide`: RETRIED or DEAD), or GONE
        (no longer in its hands: nothing moved)."""

    @property
    def beats_when_changed(self) -> bool:
        """Whether a worker beats only when its state changed (its pool vouches for it
        meanwhile, in the pool's own heartbeat); False: every second."""

    @property
    def rebeat_every(self) -> float:
        """When it beats only when its state changed: the longest its beat may go
        unwritten all the same (what it wrote expires after a while)."""

    def beat(self, worker_id: str, beat: WorkerBeat, ttl: float) -> bool:
        """Publishes the worker's heartbeat and says it is alive for ``ttl`` s; False
        when its lease is gone."""

    def leased(self, worker_id: str) -> bool:
        """Whether the worker still holds its lease: whoever recovers its messages takes
        it, so that a worker thawed after a freeze knows they are elsewhere now."""

    def held(self, worker_id: str) -> list[Message]:
        """Every message in the worker's hands, oldest first."""

    def leave(self, worker_id: str) -> None:
        """Unregisters a worker whose hands are empty (its heartbeat and lease go)."""

    def reset(self) -> None:
        """Drops the connections (a signal may have cut a read short)."""

    def close(self) -> None: ...

    def companion(self, client_name: str, socket_timeout: float) -> WorkerChannel:
        """A channel for another thread of the same worker (its heartbeat), which never
        takes: on Redis a connection of its own (a beat must not wait behind a blocking
        wait); on the database this channel's own connection, shared under a lock (no
        statement of a worker blocks, and the forge's ``max_connections`` counts each)."""


class Watch(Protocol):
    """A thread a store runs beside the pool's loop, to wake someone sooner than a tick."""

    def start(self) -> None: ...

    def stop(self) -> None:
        """Ends the thread (within seconds), cutting any wait short."""
        ...


class MailboxWatch(Watch, Protocol):
    """Wakes the pool's loop when a command lands in its mailbox."""

    @property
    def connected(self) -> bool:
        """Whether it watches now; False: the loop reads the mailbox every tick."""
        ...

    @property
    def rung(self) -> bool:
        """A command is waiting (or may be: the loop reads the mailbox to know)."""
        ...

    def read(self) -> None:
        """For the loop, after it read the mailbox: the watch waits again."""
        ...


class PoolStore(Protocol):
    """What a pool does on the store its queue is on. Not thread-safe: the pool's loop only.
    Every method raises one of ``errors`` when the store does not answer."""

    @property
    def settings(self) -> StoreSettings: ...

    def ping(self) -> None: ...

    def claim_name(self, name: str, token: str, ttl: int) -> bool:
        """Takes (or renews for ``ttl`` s) the pool's name, unless another holds it."""

    def name_owner(self, name: str) -> str:
        """Who holds the name (for the log), '' when nobody."""

    def release_name(self, name: str, token: str) -> None:
        """Gives the name and the heartbeat up, if still ``token``'s."""

    def publish(
        self, name: str, beat: PoolBeat, ttl: int, served: set[str], stopping: bool
    ) -> None:
        """Writes the pool's heartbeat (for ``ttl`` s) and, unless ``stopping``, the lanes
        it serves and a sample of the queue's depth."""

    def publish_config(self, fields: Mapping[str, str | int | float]) -> None:
        """The configuration in force, a new version of it, for producers elsewhere."""

    def recover(
        self,
        worker_id: str,
        reason: str,
        *,
        unless_beating: bool = False,
        traceback: str = "",
        timed_out: TimedOut | None = None,
    ) -> Recovery:
        """Moves what ``worker_id`` held back (delayed, one try more) or to the dead
        letters, and forgets the worker (its lease, its heartbeat), atomically; with
        ``unless_beating`` only if its heartbeat expired (checked in the same transaction).
        ``traceback`` is kept with what is dead-lettered; ``timed_out``: it was killed at
        the time limit — counted, and the job it ran given up (:class:`TimedOut`)."""

    def move_due(self) -> int:
        """Moves the retries whose time has come (by the store's clock) to the head of the
        queue; returns how many."""

    def due_in(self) -> float | None:
        """Seconds until the next retry falls due, by the store's clock (0 or less: due
        now), or None: the host's clock never enters (it may be off from the store's)."""

    def clock(self) -> float:
        """The store's clock now, in epoch seconds (Redis' TIME, the database's NOW):
        what a command's age is judged by, whatever the hosts' clocks say."""

    def silent_workers(self, ours: set[str]) -> list[str]:
        """Registered workers not in ``ours`` whose heartbeat expired."""

    def take_commands(self, name: str, limit: int) -> list[bytes]:
        """Up to ``limit`` commands sent to the pool ``name`` (:mod:`tuitop.control`),
        oldest first, each taken once; those older than COMMAND_TTL dropped."""

    def reply(self, command_id: str, body: bytes) -> None:
        """Leaves the pool's reply to ``command_id`` where its sender waits (a minute)."""

    def forget_gone_pools(self) -> None:
        """Forgets pools with neither a heartbeat nor a name claim (views read each one)."""

    def unserved_lanes_back(self, unserved_after: float) -> dict[str, int]:
        """Moves back to Tuleap's queue the messages of lanes no pool served for
        ``unserved_after`` s; how many, by lane."""

    def list_forgotten_lanes(self) -> list[str]:
        """Lanes holding messages that no record lists (an older tuitop's): listed now,
        so that they are moved back unless a pool serves them."""

    def release_lanes(self, name: str, lanes: set[str]) -> dict[str, int]:
        """Of ``lanes``, those no other live pool serves go back to Tuleap's queue (the
        pool stops, or leaves this store); how many messages, by lane."""

    def left_behind(self, hold_limit: float) -> list[LeftBehind]:
        """Messages Tuleap's own workers left, unchanged for ``hold_limit`` s."""

    def holds(self) -> tuple[int, int]:
        """Messages waiting and delayed: what a store the pool leaves still holds."""

    def watch_mailbox(
        self, name: str, wake: Callable[[], None], logger: logging.Logger
    ) -> MailboxWatch | None:
        """A watch (not started), on a connection of its own, that calls ``wake`` when a
        command lands in pool ``name``'s mailbox; None: this store cannot be waited on,
        the loop reads the mailbox every tick."""
        ...

    def doorbell(
        self,
        in_force: Callable[[], bool],
        any_idle: Callable[[], bool],
        ring_idle: Callable[[], None],
        logger: logging.Logger,
        interval: float,
    ) -> Watch | None:
        """A thread (not started) that has ``ring_idle()`` ring the pool's idle workers
        when the queue changed, looking every ``interval`` at most while ``any_idle()``
        and ``in_force()`` (this store is the pool's, and answers); None: this store's
        workers wait on the store itself."""
        ...

    def close(self) -> None: ...


class QueueAdmin(Protocol):
    """What the CLI, the producers and the dead-letter screen do on a queue. Every method
    raises one of ``errors`` when the store does not answer."""

    @property
    def settings(self) -> StoreSettings: ...

    def recover(self, worker_id: str, reason: str) -> Recovery:
        """What ``worker_id`` holds, back to the queue with one try more (or to the dead
        letters past the last), as a pool recovers a gone worker's (``tuitop
        adopt-tuleap``)."""
        ...

    @property
    def dead_letters_at(self) -> str:
        """Where the dead letters are kept, for an operator (a Redis list, a table)."""
        ...

    def tuleap_left(self) -> list[LeftBehind] | None:
        """What Tuleap's own workers hold (to adopt once they are stopped); None: this
        store's Tuleap workers hold nothing outside their transaction."""
        ...

    def push(self, raw: bytes) -> None:
        """Queues one message (tuitop's wire format), as Tuleap's front end does."""

    def push_marked(self, raw: bytes, token: str) -> None:
        """As ``push``, with a marker of ``token`` in the same transaction."""

    def was_pushed(self, token: str) -> bool:
        """Whether the push marked ``token`` happened (within the marker's minutes)."""

    def published_config(self) -> Mapping[str, str]:
        """The configuration the pools published (async scope, log level …)."""

    def dead_letters(self, start: int = 0, count: int = 50) -> list[DeadLetter]:
        """Dead letters, newest first."""

    def dead_letter_count(self) -> int: ...

    def replay(self, letter: DeadLetter, *, from_oldest: bool = False) -> bool:
        """Puts a dead letter back at the end of the queue, fresh; False when gone."""

    def replay_all(self, chunk: int = 1000) -> int:
        """Replays every dead letter there is now, oldest first; how many."""

    def purge_dead_letters(self) -> int: ...

    def held(self, worker_id: str) -> list[Message]:
        """What the worker holds (its processing list, or rows), oldest first; a worker
        holds its batch, and a view is shown at most HELD_SHOWN of it."""

    def send_command(self, pool: str, body: bytes) -> None:
        """Puts a command in the mailbox of ``pool`` (:mod:`tuitop.control`)."""

    def wait_reply(self, command_id: str, timeout: float) -> bytes | None:
        """The reply to ``command_id`` once there, None after ``timeout`` seconds."""

    def clock(self) -> float:
        """The store's clock now, in epoch seconds (a command's ``at`` is stamped by it)."""

    def withdraw_command(self, pool: str, body: bytes) -> bool:
        """Takes the command ``body`` back out of the mailbox of ``pool``, atomically
        against the pool's take: True when it was there (the pool never saw it)."""

    def live_pools(self) -> list[str]:
        """Pools and workers that show a sign of life ("pool NAME", "worker ID")."""

    def hand_back(self, reason: str) -> HandBack:
        """Gives Tuleap's queue everything only a tuitop reads (no pool running)."""

    def close(self) -> None: ...


class StoreView(Protocol):
    """What a view reads: snapshots, and the queue for the dead-letter screen."""

    def snapshot(self, now: float) -> Snapshot:
        """Everything a view shows, at a cost that does not grow with the queue."""

    def stats(self, now: float, seconds: int) -> WindowStats:
        """The counters and latencies of the last ``seconds`` (the stats keep 15 min)."""

    def queue(self) -> QueueAdmin: ...

    def close(self) -> None: ...
