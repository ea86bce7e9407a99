"""A worker's conversation with Tuleap's database (:class:`~tuitop.backends.base.WorkerChannel`).

A database cannot block a client until a row arrives (Tuleap's front ends insert and
tell nobody), so an idle worker waits on its pool's doorbell (:mod:`.doorbell`), a pipe
from the pool, with no query at all: the pool looks at the queue for all its workers,
and rings the idle ones when something came. Without a pool (a worker run alone) it looks
again every :data:`ALONE_POLL` seconds.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import Sequence
from typing import Any

from tuitop.backends.base import Batch, RetryPolicy
from tuitop.backends.db.connection import ERRORS, translate
from tuitop.backends.db.lanes import TakePlan
from tuitop.backends.db.queue import DbQueue
from tuitop.backends.db.schema import QUEUE_NAME
from tuitop.backends.errors import at_the_edge
from tuitop.beats import WorkerBeat
from tuitop.config import DatabaseSettings
from tuitop.lanes import LaneSet
from tuitop.message import Message
from tuitop.outcome import Outcome
from tuitop.stats import StatsBatch

ALONE_POLL = 0.5
"""How often a worker with no doorbell looks at the queue while idle."""
STATEMENT_TIMEOUT = 5.0
"""Seconds a worker waits for the answer to one statement (none of its statements
blocks: the doorbell is a pipe) — its heartbeat shares the connection and waits as long."""
LOCK_WAIT = 2
"""Seconds a worker's statement waits for a row lock (error 1205 after: the worker
backs off and tries again) — never as long as a lease lives, since its heartbeat waits."""


@at_the_edge(ERRORS, lambda self, error: translate(error, self.settings))
class DbChannel:
    """One worker's session with the database, taking from the lanes it serves."""

    inbox = QUEUE_NAME
    beats_when_changed = False
    rebeat_every = 0.0  # it beats every second
    """Each worker's row carries its own expiry: it is renewed every second."""
    wait_takes = False

    def __init__(
        self,
        settings: DatabaseSettings,
        *,
        lanes: LaneSet,
        serves: tuple[str, ...],
        retry: RetryPolicy,
        client_name: str,
        socket_timeout: float,
        bell: Any = None,
        queue: DbQueue | None = None,
    ) -> None:
        """``bell``: the read end of the pool's doorbell (a multiprocessing Connection);
        ``queue``: another channel's, whose connection this one shares."""
        self.settings = settings
        self.queue = queue or DbQueue(
            settings,
            retry,
            program=client_name,
            read_timeout=min(socket_timeout, STATEMENT_TIMEOUT),
            lock_wait=LOCK_WAIT,
        )
        self.plan = TakePlan(lanes, serves)
        self._bell = bell
        self._lanes, self._serves, self._retry = lanes, serves, retry

    def companion(self, client_name: str, socket_timeout: float) -> DbChannel:
        return DbChannel(
            self.settings,
            lanes=self._lanes,
            serves=self._serves,
            retry=self._retry,
            client_name=client_name,
            socket_timeout=socket_timeout,
            queue=self.queue,
        )

    def start(self, worker_id: str) -> None:
        self.queue.ping()
        pool = worker_id.split("/", 1)[0]
        self.queue.register(worker_id, pool, {}, ttl=10.0)

    def ping(self) -> None:
        self.queue.ping()

    def take(self, worker_id: str, max_batch: int) -> Batch:
        messages, source, held = self.queue.take(worker_id, max_batch, self.plan)
        return Batch(messages, source, held)

    def wait(self, worker_id: str, timeout: float) -> Batch:
        if self._bell is None:
            time.sleep(min(timeout, ALONE_POLL))
        else:
            descriptor = self._bell.fileno()
            ready, _, _ = select.select([descriptor], [], [], timeout)
            if ready:
                rung = b"-"
                with contextlib.suppress(BlockingIOError):
                    rung = os.read(descriptor, 4096)  # every ring so far: one look answers all
                if not rung:
                    # End of file: the pool is gone (its worker stops within a second);
                    # until then it looks on its own, not in a loop on a dead pipe.
                    self._bell = None
        return Batch([], self.inbox)

    def ack(self, worker_id: str, messages: Sequence[Message], stats: StatsBatch) -> bool:
        if not messages and not stats.fields:
            return True
        return self.queue.ack(worker_id, messages, stats)

    def ack_and_take(
        self, worker_id: str, messages: Sequence[Message], stats: StatsBatch, max_batch: int
    ) -> tuple[bool, Batch]:
        # Two transactions: the take locks rows of the queue, the ack the worker's own.
        # A take that fails after the acks went raises: the worker knows they may be made.
        all_there = self.ack(worker_id, messages, stats)
        return all_there, self.take(worker_id, max_batch)

    def give_back(self, worker_id: str, messages: Sequence[Message], source: str) -> None:
        self.queue.give_back(worker_id, messages)

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
        return self.queue.fail(
            worker_id,
            message,
            reason,
            traceback=traceback,
            retryable=retryable,
            payload=payload,
            outcome=outcome,
        )

    def beat(self, worker_id: str, beat: WorkerBeat, ttl: float) -> bool:
        return self.queue.beat(worker_id, beat.fields(), ttl)

    def leased(self, worker_id: str) -> bool:
        return self.queue.leased(worker_id)

    def held(self, worker_id: str) -> list[Message]:
        return self.queue.held(worker_id)

    def leave(self, worker_id: str) -> None:
        self.queue.leave(worker_id)

    def reset(self) -> None:
        self.queue.close()

    def close(self) -> None:
        self.queue.close()
