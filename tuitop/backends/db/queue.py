"""The reliable queue in Tuleap's database: push, take, ack, retry, dead-letter, recover.

The same promise as in Redis (:mod:`tuitop.backends.redis.queue`): a message is at
every moment in exactly one place — a row of Tuleap's ``async_events`` (waiting), of
``tuitop_processing`` (in one worker's hands), of ``tuitop_delayed`` (waiting for its retry), of
``tuitop_dead_letters`` — or it is done (deleted). Every move is one transaction: the row
is copied and deleted together, so a crash of a worker, of a pool or of the server at any
point leaves it in one of those places (InnoDB rolls back what was not committed).

Taking is Tuleap's own ``SELECT … ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED`` (workers
never wait for each other's rows), then the rows move to ``tuitop_processing`` and the
transaction ends: a job runs with no transaction open and no lock held, however long it
takes. Tuleap's worker keeps its transaction open while the task runs (up to 15 min); a
worker killed then has its row rolled back with no try counted (a message that kills its
worker is taken again forever), and one frozen keeps the lock until its connection dies.
Claiming by moving counts every try, and what a gone worker held is recovered by its
id, as in Redis.

Tuleap's rules: ``nb_added_in_queue`` is the try count (Redis' ``_queued_total``); a
message that comes back carries one more and waits 5, 10, 20 s; past 3 returns Tuleap
deletes it — tuitop moves it to the dead letters with why.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pymysql
from pymysql.cursors import Cursor

from tuitop.backends.base import (
    DeadLetter,
    HandBack,
    Recovery,
    RetryPolicy,
    TimedOut,
    recovery_fates,
)
from tuitop.backends.db.connection import Session, execute_all, placeholders
from tuitop.backends.db.dialect import NEW_ROW, Dialect
from tuitop.backends.db.lanes import TakePlan, lane_names
from tuitop.backends.db.placement import placed_ids
from tuitop.backends.db.schema import (
    MESSAGE_COLUMNS,
    NOW,
    QUEUE_NAME,
    REASON_BYTES,
    TRACEBACK_BYTES,
    fit,
    fit_json,
)
from tuitop.config import DatabaseSettings
from tuitop.lanes import LANE_PREFIX, lane_queue
from tuitop.message import Message, decode
from tuitop.outcome import Outcome
from tuitop.phpjson import PhpJsonError, task_input
from tuitop.stats import MAX_TOPICS, OTHER_TOPIC, TOPIC_PREFIX, StatsBatch, bucket_start

PUSH_MARKER_SECONDS = 300
ROUTING_ROUNDS = 8
"""Looks at Tuleap's queue a take makes when all it finds belongs to other lanes."""
Row = tuple[Any, ...]
Statement = tuple[str, Sequence[Any]]

_STATS_UPSERT = (
    "INSERT INTO tuitop_stats (bucket, name, count) VALUES {values} "
    f"ON DUPLICATE KEY UPDATE count = count + {NEW_ROW}.count"
)
_TOPIC_NAMES = (
    "SET @tuitop_names := (SELECT COUNT(*) FROM tuitop_stats "
    "WHERE bucket = %s AND name LIKE %s AND name <> %s)"
)
_TOPIC_IS_NEW = (
    "SET @tuitop_new := NOT EXISTS (SELECT 1 FROM tuitop_stats WHERE bucket = %s AND name = %s)"
)
_TOPIC_NAME = "SET @tuitop_name := IF(NOT @tuitop_new OR @tuitop_names < %s, %s, %s)"
_TOPIC_COUNTED = "SET @tuitop_names := @tuitop_names + (@tuitop_new AND @tuitop_name <> %s)"
_BELL = ("UPDATE tuitop_bell SET bell = bell + 1 WHERE one = 1", ())


def uuid7(now: float | None = None) -> bytes:
    """A UUIDv7 (RFC 9562) as Tuleap's ids are: 48 bits of Unix milliseconds, then 12
    bits of the millisecond's fraction (ids made in one process stay in order), then
    random bits. Python 3.14 has ``uuid.uuid7``; this is the same layout."""
    moment = time.time() if now is None else now
    milliseconds = int(moment * 1000)
    fraction = int((moment * 1000 - milliseconds) * 4096) & 0xFFF
    random_bits = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (milliseconds << 80) | (0x7 << 76) | (fraction << 64) | (0b10 << 62) | random_bits
    return value.to_bytes(16, "big")


def payload_text(payload: Any) -> str:
    """A payload as Tuleap's front end writes it (``Psl\\Json\\encode``: no spaces,
    neither slashes nor non-ASCII escaped). Raises ValueError for what JSON cannot say."""
    try:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except RecursionError:
        raise ValueError("nested too deep to be written as JSON") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: kept as JSON's escape
        text = json.dumps(payload, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text


def _row_document(topic: str, payload: str) -> bytes:
    """A row as one message document, the payload's JSON as the row holds it: what
    tuitop's own handlers read (Python's reading of the JSON, ``{}`` an object)."""
    name = json.dumps(topic, ensure_ascii=False).encode("utf-8", "surrogateescape")
    return (
        b'{"event_name":'
        + name
        + b',"payload":'
        + payload.encode("utf-8", "surrogateescape")
        + b"}"
    )


def row_message(row: Row) -> Message:
    """A row of the message columns (:data:`MESSAGE_COLUMNS`) as a worker runs it: its
    ``raw`` is what Tuleap's worker writes on the task's stdin for it
    (:func:`tuitop.phpjson.task_input`: the payload through PHP's arrays), its
    ``payload`` what tuitop's handlers read. A payload Tuleap's worker could not read
    (it would die on the row, and take it again forever) is a message with a problem:
    dead-lettered at once, with PHP's reason."""
    row_id, _, topic, payload, seconds, microseconds, tries = row[:7]
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8", "surrogateescape")
    message = decode(_row_document(str(topic), str(payload)))
    raw, problem = message.raw, message.problem
    try:
        raw = task_input(str(topic), str(payload))
    except PhpJsonError as error:
        problem = f"Tuleap's worker cannot read its payload: {error}"
    return replace(
        message,
        topic=str(topic),  # the row's, even when its payload is unusable
        raw=raw,
        problem=problem,
        enqueue_ts=float(seconds) + float(microseconds) / 1e6,
        queued_total=int(tries),
        row_id=bytes(row_id),
    )


def _in(ids: Sequence[bytes]) -> str:
    return f"id IN ({placeholders(len(ids))})"


def _ids(messages: Iterable[Message]) -> list[bytes]:
    return [message.row_id for message in messages if message.row_id is not None]


DUPLICATE_KEY = 1062
CHECK_FAILED = 4025
INVALID_JSON = 3140
JSON_REFUSED = (CHECK_FAILED, INVALID_JSON)
"""Tuleap's table refuses a payload: MariaDB's JSON column is a CHECK (json_valid),
4025; MySQL's is a JSON type, which says 3140 (ER_INVALID_JSON_TEXT)."""
REFUSED_REASON = (
    "Tuleap's table refuses its payload (its JSON column cannot read it back); "
    "it cannot be queued again"
)
"""Why a row Tuleap's table refused (:data:`JSON_REFUSED`) is a dead letter."""
_REST = (
    "queue_name, topic, payload, enqueue_timestamp, enqueue_timestamp_microsecond, "
    "nb_added_in_queue"
)
"""The message columns after ``id``, as a copy selects them unchanged."""
_REST_REQUEUED = _REST.replace("queue_name", "%s", 1)
"""The same, to Tuleap's queue (``QUEUE_NAME`` the argument), whatever lane it was on."""


@dataclass(frozen=True)
class Copied:
    """What :func:`copy_rows` did besides copying: ids it gave a new one (old → new), and
    rows the target refused (their payload, by its JSON check)."""

    renamed: dict[bytes, bytes] = field(default_factory=dict)
    refused: list[bytes] = field(default_factory=list)

    def moved(self, ids: Sequence[bytes]) -> list[bytes]:
        """Of ``ids``, those that were copied (to delete where they came from)."""
        return [row_id for row_id in ids if bytes(row_id) not in self.refused]


def copy_rows(
    cursor: Cursor,
    target: str,
    source: str,
    ids: Sequence[bytes],
    *,
    select: str = _REST,
    args: Sequence[Any] = (),
    extra: str = "",
    ids_to: Mapping[bytes, bytes] | None = None,
) -> Copied:
    """Copies the rows ``ids`` of ``source`` into ``target`` (``select``: the expressions
    of the columns after ``id``, then of ``extra`` ones, with ``args``), in one statement
    when it can. One row never fails the move of the others: a row whose id ``target``
    holds already (a row of Tuleap's table written by hand, a restored dump) is copied
    under a new id; one ``target`` refuses (Tuleap's table checks its payload is JSON
    MariaDB can read) is left where it is, said in what is returned. ``ids_to``: the new
    id of each row that gets one (:mod:`.placement`). The caller holds the rows' locks."""
    columns = f"{MESSAGE_COLUMNS}, {extra}" if extra else MESSAGE_COLUMNS
    statement = f"INSERT INTO {target} ({columns}) SELECT %s, {select} FROM {source} "
    ids_to = ids_to or {}
    new_id, id_args = _renaming(ids_to)
    try:
        cursor.execute(
            statement.replace("%s", new_id, 1) + f"WHERE {_in(ids)}", (*id_args, *args, *ids)
        )
        return Copied(renamed=dict(ids_to))
    except pymysql.MySQLError as error:
        if _code(error) not in (DUPLICATE_KEY, *JSON_REFUSED):
            raise
    # InnoDB rolled the statement back, not the transaction: one row at a time.
    copied = Copied(renamed=dict(ids_to))
    for row_id in ids:
        try:
            placed = ids_to.get(bytes(row_id), row_id)
            cursor.execute(statement + "WHERE id = %s", (placed, *args, row_id))
        except pymysql.MySQLError as error:
            if _code(error) in JSON_REFUSED:
                copied.refused.append(bytes(row_id))
            elif _code(error) == DUPLICATE_KEY:
                copied.renamed[bytes(row_id)] = fresh = uuid7()
                cursor.execute(statement + "WHERE id = %s", (fresh, *args, row_id))
            else:
                raise
    return copied


def _renaming(ids_to: Mapping[bytes, bytes]) -> tuple[str, list[bytes]]:
    """The expression of a row's new id in a statement reading its ``id``, and its
    arguments (``id`` itself when none is renamed)."""
    if not ids_to:
        return "id", []
    cases = " ".join(["WHEN %s THEN %s"] * len(ids_to))
    return f"CASE id {cases} ELSE id END", [value for pair in ids_to.items() for value in pair]


def _code(error: BaseException) -> int | None:
    return error.args[0] if error.args and isinstance(error.args[0], int) else None


def _placed_back(cursor: Cursor, source: str, ids: Sequence[bytes]) -> dict[bytes, bytes]:
    """New ids for the rows ``ids`` of ``source`` going back to their own ``queue_name``
    of Tuleap's table (:func:`~.placement.placed_ids`, for each queue they go to)."""
    cursor.execute(f"SELECT id, queue_name FROM {source} WHERE {_in(ids)}", ids)
    by_queue: dict[str, list[bytes]] = {}
    for row_id, queue_name in cursor.fetchall():
        by_queue.setdefault(str(queue_name), []).append(bytes(row_id))
    placed: dict[bytes, bytes] = {}
    for queue_name, queued in sorted(by_queue.items()):
        placed.update(placed_ids(cursor, queue_name, queued))
    return placed


def _locked(cursor: Cursor, table: str, worker_id: str, ids: Sequence[bytes]) -> list[bytes]:
    """Of ``ids``, those still in ``worker_id``'s hands, locked: a copy that reads them
    after this reads the rows no recovery can move meanwhile (a plain read in READ
    COMMITTED would copy a row another transaction is moving away)."""
    cursor.execute(
        f"SELECT id FROM {table} WHERE worker_id = %s AND {_in(ids)} ORDER BY id FOR UPDATE",
        (worker_id, *ids),
    )
    return [found for (found,) in cursor.fetchall()]


def stats_statement(stats: StatsBatch, now: float, dialect: Dialect) -> Statement | None:
    """The upsert adding ``stats`` (no topic in it: see :func:`stats_statements`) to the
    bucket of ``now`` (and resetting it); None when there is nothing to add."""
    statements = stats_statements(stats, now, dialect)
    assert len(statements) <= 1, "topics need stats_statements"
    return statements[0] if statements else None


def stats_statements(stats: StatsBatch, now: float, dialect: Dialect) -> list[Statement]:
    """What adds ``stats`` to the bucket of ``now`` (and resets it), to run in one
    transaction: the upsert of the plain counters, then for each topic its fields under
    its name, or under OTHER_TOPIC once the bucket holds MAX_TOPICS names (counted in the
    transaction, with user variables: no round trip of its own). Names in order, so that
    two workers lock rows alike."""
    if not stats.fields:
        return []
    bucket = bucket_start(now)
    plain, topics = stats.split()
    upsert_sql = dialect.upsert(_STATS_UPSERT)
    statements: list[Statement] = []
    if plain:
        names = sorted(plain)
        args: list[Any] = []
        for name in names:
            args += [bucket, name, plain[name]]
        values = ", ".join(["(%s, %s, %s)"] * len(names))
        statements.append((upsert_sql.format(values=values), args))
    if topics:
        other = f"{TOPIC_PREFIX}n|{OTHER_TOPIC}"
        statements.append((_TOPIC_NAMES, (bucket, f"{TOPIC_PREFIX}n|%", other)))
    for topic, heads in topics.items():
        first = f"{TOPIC_PREFIX}n|{topic}"
        statements.append((_TOPIC_IS_NEW, (bucket, first)))
        statements.append((_TOPIC_NAME, (MAX_TOPICS, topic, OTHER_TOPIC)))
        statements.append((_TOPIC_COUNTED, (OTHER_TOPIC,)))
        upsert: list[Any] = []
        for head in sorted(heads):
            upsert += [bucket, f"{TOPIC_PREFIX}{head}|", heads[head]]
        values = ", ".join(["(%s, CONCAT(%s, @tuitop_name), %s)"] * len(heads))
        statements.append((upsert_sql.format(values=values), upsert))
    stats.written(now)
    return statements


def _count(outcome: str, count: int, dialect: Dialect) -> Statement | None:
    batch = StatsBatch()
    batch.outcome(outcome, count)
    return stats_statement(batch, time.time(), dialect)


class DbQueue:
    """The queue's moves on one session, which threads may share (each move is one
    statement or transaction under the session's lock); :meth:`take` is one thread's."""

    def __init__(
        self,
        settings: DatabaseSettings,
        retry: RetryPolicy | None = None,
        *,
        program: str = "tuitop",
        read_timeout: float | None = 30.0,
        lock_wait: int | None = None,
        session: Session | None = None,
    ) -> None:
        """``session``: another's to share (the other arguments then unused)."""
        self.settings = settings
        self.retry_policy = retry or RetryPolicy()
        self.session = session or Session(
            settings, program=program, read_timeout=read_timeout, lock_wait=lock_wait
        )
        self._routed: set[str] = set()
        """Lanes the take under way moved rows to (listed once it committed)."""

    def close(self) -> None:
        self.session.close()

    def ping(self) -> None:
        self.session.run(lambda cursor: cursor.execute("SELECT 1"))

    def _atomic(self, statements: Sequence[Statement | None]) -> list[int]:
        """The statements in one transaction and one round trip; their row counts."""
        kept = [statement for statement in statements if statement is not None]
        if not kept:
            return []
        wrapped: list[Statement] = [("START TRANSACTION", ()), *kept, ("COMMIT", ())]
        counts = self.session.run(
            lambda cursor: execute_all(cursor, wrapped), again_after_deadlock=True
        )
        return counts[1:-1]

    # --- producers ------------------------------------------------------------------------

    def push(self, raw: bytes) -> None:
        """Inserts one message as Tuleap's front end does (a row of ``async_events``);
        ``raw`` is tuitop's wire format (its topic, payload, enqueue time and tries)."""
        self._atomic([self._insert(raw), _count(Outcome.ENQUEUED, 1, self.session.dialect)])

    def push_marked(self, raw: bytes, token: str) -> None:
        """As ``push``, with the marker of ``token`` in the same transaction: whoever lost
        the reply can tell whether it was pushed (:meth:`was_pushed`)."""
        marker = (
            f"INSERT INTO tuitop_push_markers (token, at) VALUES (%s, {NOW})",
            (token,),
        )
        prune = (
            f"DELETE FROM tuitop_push_markers WHERE at < {NOW} - %s LIMIT 100",
            (PUSH_MARKER_SECONDS,),
        )
        self._atomic(
            [self._insert(raw), marker, prune, _count(Outcome.ENQUEUED, 1, self.session.dialect)]
        )

    def was_pushed(self, token: str) -> bool:
        def ask(cursor: Cursor) -> bool:
            cursor.execute(
                f"SELECT 1 FROM tuitop_push_markers WHERE token = %s AND at >= {NOW} - %s",
                (token, PUSH_MARKER_SECONDS),
            )
            return cursor.fetchone() is not None

        return self.session.run(ask)

    def _insert(self, raw: bytes) -> Statement:
        message = decode(raw)
        if message.problem is not None:
            raise ValueError(f"not a message tuitop can queue: {message.problem}")
        stamp = message.enqueue_ts if message.enqueue_ts > 0 else time.time()
        return (
            f"INSERT INTO async_events ({MESSAGE_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                uuid7(stamp),
                QUEUE_NAME,
                message.topic,
                payload_text(message.payload),
                int(stamp),
                int(stamp % 1 * 1e6),
                min(message.queued_total, 255),
            ),
        )

    # --- workers --------------------------------------------------------------------------

    def take(
        self, worker_id: str, max_batch: int, plan: TakePlan | None = None
    ) -> tuple[list[Message], str, int]:
        """Moves up to ``max_batch`` of the oldest waiting rows of the first lane ``plan``
        serves that has any into the worker's hands; returns them, the lane, and — when
        nothing was taken — how many rows the worker holds already. Rows of Tuleap's queue
        whose lane it does not serve are moved to that lane's ``queue_name`` meanwhile, in
        the same transaction (:mod:`.lanes`)."""
        plan = plan or TakePlan()

        def move(cursor: Cursor) -> tuple[list[Row], str, int]:
            # Two round trips when something is taken: the transaction's start goes with
            # the first look, its end with the move.
            begin: list[Statement] = [("START TRANSACTION", ())]
            for lane, queue_name in plan.sources:
                routing = plan.routes and queue_name == QUEUE_NAME
                for _ in range(ROUTING_ROUNDS if routing else 1):
                    execute_all(
                        cursor,
                        [
                            *begin,
                            (
                                f"SELECT {MESSAGE_COLUMNS} FROM async_events "
                                "WHERE queue_name = %s ORDER BY id LIMIT %s "
                                "FOR UPDATE SKIP LOCKED",
                                (queue_name, max_batch),
                            ),
                        ],
                    )
                    begin = []
                    rows = list(cursor.fetchall())
                    kept = self._route(cursor, plan, rows) if routing else rows
                    if kept:
                        return self._move_taken(cursor, worker_id, kept), lane, 0
                    if len(rows) < max_batch:
                        break  # nothing more there (what was, went to its lane)
            execute_all(
                cursor,
                [
                    *begin,
                    ("COMMIT", ()),
                    ("SELECT COUNT(*) FROM tuitop_processing WHERE worker_id = %s", (worker_id,)),
                ],
            )
            (held,) = cursor.fetchone() or (0,)
            return [], plan.serves[0], int(held)

        # Any error closes the connection: the server rolls the transaction back.
        self._routed = set()
        rows, source, held = self.session.run(move, again_after_deadlock=True)
        self._list_routed()
        return [row_message(row) for row in rows], source, held

    def _route(self, cursor: Cursor, plan: TakePlan, rows: list[Row]) -> list[Row]:
        """Moves the rows (locked) of lanes ``plan`` does not serve to their lanes, in one
        round trip; returns the others. The lanes moved to are listed (found, and moved
        back, if no pool ever serves them) and the bell rung (their idle workers take)
        once the move is committed (:meth:`_routed`): no row every worker's take needs is
        locked inside this transaction."""
        kept: list[Row] = []
        moves: dict[str, list[bytes]] = {}
        for row in rows:
            target = plan.route(str(row[2]))
            if target is None:
                kept.append(row)
            else:
                moves.setdefault(target, []).append(row[0])
        if moves:
            execute_all(
                cursor,
                [
                    (
                        f"UPDATE async_events SET queue_name = %s WHERE {_in(ids)}",
                        (lane_queue(lane), *ids),
                    )
                    for lane, ids in moves.items()
                ],
            )
            self._routed.update(moves)
        return kept

    def _list_routed(self) -> None:
        """After a take committed: the lanes it moved rows to, listed; the bell rung. A
        lane left unlisted (the worker died in between) is found by the pools' scan."""
        lanes, self._routed = sorted(self._routed), set()
        if not lanes:
            return
        values = ", ".join(["(%s, 0)"] * len(lanes))
        with contextlib.suppress(pymysql.MySQLError):
            self.session.run(
                lambda cursor: execute_all(
                    cursor,
                    [
                        (
                            f"INSERT IGNORE INTO tuitop_lanes (lane, served_at) VALUES {values}",
                            lanes,
                        ),
                        _BELL,
                    ],
                )
            )

    def _move_taken(self, cursor: Cursor, worker_id: str, rows: list[Row]) -> list[Row]:
        """Moves the rows a take locked into the worker's hands and commits, in one round
        trip; the rows as they are held (a colliding id renamed: :func:`copy_rows`)."""
        ids = [row[0] for row in rows]
        select = f"{_REST}, %s, {NOW}"
        # One row a statement: ``id IN (…)`` may be read by a scan of the table (the
        # optimizer's pick for a few rows), which locks — waits for — each row it reads,
        # Tuleap's worker's too (DELETE has no semi-consistent read); ``id =`` reads one.
        delete: list[Statement] = [
            *(("DELETE FROM async_events WHERE id = %s", (row_id,)) for row_id in ids),
            ("COMMIT", ()),
        ]
        try:
            execute_all(
                cursor,
                [
                    (
                        f"INSERT INTO tuitop_processing ({MESSAGE_COLUMNS}, worker_id, "
                        f"taken_at) SELECT id, {select} FROM async_events WHERE {_in(ids)}",
                        (worker_id, *ids),
                    ),
                    *delete,
                ],
            )
            return rows
        except pymysql.err.IntegrityError as error:
            if error.args[0] != DUPLICATE_KEY:
                raise
        # Nothing after the failed statement ran; the transaction and its locks stand.
        renamed = copy_rows(
            cursor,
            "tuitop_processing",
            "async_events",
            ids,
            select=select,
            args=(worker_id,),
            extra="worker_id, taken_at",
        ).renamed
        execute_all(cursor, delete)
        return [(renamed.get(bytes(row[0]), row[0]), *row[1:]) for row in rows]

    def ack(self, worker_id: str, messages: Sequence[Message], stats: StatsBatch) -> bool:
        """Deletes finished messages from the worker's hands and adds ``stats``, in one
        transaction and one round trip; False when some were no longer there."""
        ids = _ids(messages)
        delete: Statement | None = None
        if ids:
            delete = (
                f"DELETE FROM tuitop_processing WHERE worker_id = %s AND {_in(ids)}",
                (worker_id, *ids),
            )
        counts = self._atomic([delete, *stats_statements(stats, time.time(), self.session.dialect)])
        return not ids or counts[0] == len(ids)

    def give_back(self, worker_id: str, messages: Sequence[Message]) -> None:
        """Puts messages taken and never started back where they were, taken next (new
        ids where no lock waits: :mod:`.placement`), try count unchanged; one no longer
        in the worker's hands stays where it is."""
        ids = _ids(messages)
        if not ids:
            return

        def move(cursor: Cursor) -> None:
            held = _locked(cursor, "tuitop_processing", worker_id, ids)
            if not held:
                return
            placed = _placed_back(cursor, "tuitop_processing", held)
            # One Tuleap's table refuses stays in the worker's hands: recovered with it.
            copied = copy_rows(cursor, "async_events", "tuitop_processing", held, ids_to=placed)
            moved = copied.moved(held)
            if moved:
                cursor.execute(f"DELETE FROM tuitop_processing WHERE {_in(moved)}", moved)

        self.session.transaction(move)
        self.ring()

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
        the dead letters, atomically. Returns RETRIED, DEAD, or GONE (no longer held:
        nothing moved)."""
        replacement = None if payload is None else payload_text(payload)

        def move(cursor: Cursor) -> Outcome:
            cursor.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM tuitop_processing "
                "WHERE id = %s AND worker_id = %s FOR UPDATE",
                (message.row_id, worker_id),
            )
            row = cursor.fetchone()
            if row is None:
                return Outcome.GONE
            result = self._reschedule(
                cursor,
                row_message(row),
                reason,
                worker_id,
                traceback=traceback,
                retryable=retryable,
                replacement=replacement,
            )
            cursor.execute(
                "DELETE FROM tuitop_processing WHERE id = %s AND worker_id = %s",
                (message.row_id, worker_id),
            )
            return result

        result = self.session.transaction(move)
        if result is not Outcome.GONE:
            self._count_after([(outcome, 1), (result, 1)])
        return result

    def _count_after(self, outcomes: Sequence[tuple[str, int]]) -> None:
        """Adds to the stats after a move committed, outside its transaction (the hot
        rows of the current bucket are locked a moment, never while a transaction waits
        on its client); a count the server misses is a figure, not a message."""
        batch = StatsBatch()
        for outcome, count in outcomes:
            if count:
                batch.outcome(outcome, count)
        with contextlib.suppress(pymysql.MySQLError):
            self._atomic([stats_statement(batch, time.time(), self.session.dialect)])

    def register(self, worker_id: str, pool: str, fields: dict[str, Any], ttl: float) -> None:
        """Registers a worker and gives it its lease (its row): whoever recovers what it
        holds deletes the row."""
        self.session.run(
            lambda cursor: cursor.execute(
                self.session.dialect.upsert(
                    "INSERT INTO tuitop_workers (id, pool, expires_at, beat) "
                    f"VALUES (%s, %s, {NOW} + %s, %s) ON DUPLICATE KEY UPDATE "
                    f"expires_at = {NEW_ROW}.expires_at, beat = {NEW_ROW}.beat"
                ),
                (worker_id, pool, ttl, fit_json(fields)),
            )
        )

    def beat(self, worker_id: str, fields: dict[str, Any], ttl: float) -> bool:
        """Renews a worker's heartbeat; False when its row is gone (its lease with it)."""
        found = self.session.run(
            lambda cursor: cursor.execute(
                f"UPDATE tuitop_workers SET expires_at = {NOW} + %s, beat = %s WHERE id = %s",
                (ttl, fit_json(fields), worker_id),
            )
        )
        return bool(found)

    def leased(self, worker_id: str) -> bool:
        def ask(cursor: Cursor) -> bool:
            cursor.execute("SELECT 1 FROM tuitop_workers WHERE id = %s", (worker_id,))
            return cursor.fetchone() is not None

        return self.session.run(ask)

    def held(self, worker_id: str, limit: int | None = None) -> list[Message]:
        """What the worker holds, oldest first (the ``limit`` oldest, when given)."""

        def read(cursor: Cursor) -> list[Row]:
            cursor.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM tuitop_processing WHERE worker_id = %s ORDER BY id"
                + ("" if limit is None else f" LIMIT {int(limit)}"),
                (worker_id,),
            )
            return list(cursor.fetchall())

        return [row_message(row) for row in self.session.run(read)]

    def leave(self, worker_id: str) -> None:
        self.session.run(
            lambda cursor: cursor.execute("DELETE FROM tuitop_workers WHERE id = %s", (worker_id,))
        )

    # --- pools ----------------------------------------------------------------------------

    def recover(
        self,
        worker_id: str,
        reason: str,
        *,
        unless_beating: bool = False,
        traceback: str = "",
        timed_out: TimedOut | None = None,
    ) -> Recovery:
        """Moves everything ``worker_id`` holds back (delayed, one try more) or to the
        dead letters, and deletes its row (lease and heartbeat), in one transaction; safe
        from several pools at once. ``unless_beating``: nothing while its heartbeat lives,
        checked under the row's lock."""

        def move(cursor: Cursor) -> Recovery:
            cursor.execute(
                f"SELECT expires_at > {NOW} FROM tuitop_workers WHERE id = %s FOR UPDATE",
                (worker_id,),
            )
            beating = cursor.fetchone()
            if unless_beating and beating is not None and beating[0]:
                return Recovery(0, 0)
            cursor.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM tuitop_processing WHERE worker_id = %s "
                "ORDER BY id FOR UPDATE",
                (worker_id,),
            )
            rows = list(cursor.fetchall())
            held = [row_message(row) for row in rows]
            outcomes = []
            for message, (why, retryable) in zip(
                held, recovery_fates(held, reason, timed_out), strict=True
            ):
                result = self._reschedule(
                    cursor, message, why, worker_id, traceback=traceback, retryable=retryable
                )
                outcomes.append((message.topic, result))
            requeued = sum(result is Outcome.RETRIED for _, result in outcomes)
            dead = sum(result is Outcome.DEAD for _, result in outcomes)
            # Only the rows read and moved here: a take by that worker (thawed meanwhile)
            # may have committed another one, which no gap lock keeps out in READ
            # COMMITTED; it stays its own, to give back, or for the next recovery.
            ids = [row[0] for row in rows]
            statements: list[Statement] = [
                ("DELETE FROM tuitop_workers WHERE id = %s", (worker_id,)),
            ]
            if ids:
                statements.append(
                    (f"DELETE FROM tuitop_processing WHERE {_in(ids)}", ids),
                )
            execute_all(cursor, statements)
            return Recovery(requeued, dead, tuple(outcomes))

        recovery = self.session.transaction(move)
        self._count_after(
            [(Outcome.RETRIED, recovery.requeued), (Outcome.DEAD, recovery.dead_lettered),
             (Outcome.TIMEDOUT, int(timed_out is not None))]
        )  # fmt: skip
        return recovery

    def move_due(self, limit: int = 1000, *, all_of_them: bool = False) -> int:
        """Moves the retries whose time has come (by the database's clock; every one with
        ``all_of_them``) back to Tuleap's table, taken next (:mod:`.placement`)."""

        if not all_of_them and not self._any_due():
            return 0  # one statement, no transaction: the pool asks every second

        def move(cursor: Cursor) -> int:
            due = "TRUE" if all_of_them else f"due_at <= {NOW}"
            cursor.execute(
                f"SELECT id FROM tuitop_delayed WHERE {due} ORDER BY due_at LIMIT %s "
                "FOR UPDATE SKIP LOCKED",
                (limit,),
            )
            ids = [row[0] for row in cursor.fetchall()]
            if not ids:
                return 0
            copied = copy_rows(
                cursor,
                "async_events",
                "tuitop_delayed",
                ids,
                select=_REST_REQUEUED,
                args=(QUEUE_NAME,),
                ids_to=placed_ids(cursor, QUEUE_NAME, ids),
            )
            for row_id in copied.refused:  # never to be taken: given up, with why
                cursor.execute(
                    f"INSERT INTO tuitop_dead_letters ({MESSAGE_COLUMNS}, reason, worker, at, "
                    f"traceback) SELECT {MESSAGE_COLUMNS}, %s, '', {NOW}, '' FROM "
                    "tuitop_delayed WHERE id = %s",
                    (REFUSED_REASON, row_id),
                )
            cursor.execute(f"DELETE FROM tuitop_delayed WHERE {_in(ids)}", ids)
            return len(ids)

        moved = self.session.transaction(move)
        if moved:
            self.ring()
        return moved

    def ring(self) -> None:
        """Bumps the bell counter the pools' doorbells read (an old id is back where
        workers take). Never inside a move's transaction: the one row would be locked
        while it waits for its client; a bump lost is a few seconds of a worker's own
        timeout, not a message."""
        with contextlib.suppress(pymysql.MySQLError):
            self.session.run(lambda cursor: cursor.execute(_BELL[0]))

    def _any_due(self) -> bool:
        def ask(cursor: Cursor) -> bool:
            cursor.execute(f"SELECT 1 FROM tuitop_delayed WHERE due_at <= {NOW} LIMIT 1")
            return cursor.fetchone() is not None

        return self.session.run(ask)

    def due_in(self) -> float | None:
        """Seconds until the next retry falls due, by the database's clock, or None."""

        def ask(cursor: Cursor) -> float | None:
            cursor.execute(f"SELECT MIN(due_at) - {NOW} FROM tuitop_delayed")
            row = cursor.fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return self.session.run(ask)

    def live_pools(self) -> list[str]:
        """Pools and workers that show a sign of life (a heartbeat, a name claim)."""

        def ask(cursor: Cursor) -> list[str]:
            cursor.execute(
                f"SELECT name FROM tuitop_pools WHERE expires_at > {NOW} OR "
                f"claimed_until > {NOW} ORDER BY name"
            )
            live = [f"pool {name}" for (name,) in cursor.fetchall()]
            cursor.execute(f"SELECT id FROM tuitop_workers WHERE expires_at > {NOW} ORDER BY id")
            return live + [f"worker {worker_id}" for (worker_id,) in cursor.fetchall()]

        return self.session.run(ask)

    def hand_back(self, reason: str) -> HandBack:
        """Gives Tuleap's table everything only a tuitop reads, once none runs: what
        tuitop's workers held (one more try, or dead-lettered past the last; never what
        a worker that still beats holds), and every retry waiting its time, first."""

        def holders(cursor: Cursor) -> list[str]:
            cursor.execute("SELECT DISTINCT worker_id FROM tuitop_processing ORDER BY worker_id")
            return [str(worker_id) for (worker_id,) in cursor.fetchall()]

        recovered = sum(
            self.recover(worker_id, reason, unless_beating=True).total
            for worker_id in self.session.run(holders)
        )
        retries = 0
        while count := self.move_due(all_of_them=True):
            retries += count
        lanes = {lane: self.move_lane_back(lane) for lane in self.lanes_holding()}
        return HandBack(recovered, {lane: n for lane, n in lanes.items() if n}, retries)

    def lanes_holding(self) -> list[str]:
        """The lanes whose ``queue_name`` rows of Tuleap's table carry (an index read)."""

        def read(cursor: Cursor) -> list[str]:
            cursor.execute(
                "SELECT DISTINCT queue_name FROM async_events WHERE queue_name LIKE %s",
                (LANE_PREFIX.replace("_", "\\_") + "%",),
            )
            return lane_names(str(name) for (name,) in cursor.fetchall())

        return self.session.run(read)

    def move_lane_back(self, lane: str, limit: int = 0) -> int:
        """Moves a lane's rows back to Tuleap's queue (``limit`` at most, 0: all, a
        thousand a transaction), taken next (:mod:`.placement`); returns how many."""
        moved = 0
        while True:
            chunk = 1000 if not limit else min(1000, limit - moved)

            def move(cursor: Cursor, chunk: int = chunk) -> int:
                cursor.execute(
                    "SELECT id FROM async_events WHERE queue_name = %s ORDER BY id LIMIT %s "
                    "FOR UPDATE",
                    (lane_queue(lane), chunk),
                )
                ids = [bytes(row_id) for (row_id,) in cursor.fetchall()]
                if not ids:
                    return 0
                new_id, id_args = _renaming(placed_ids(cursor, QUEUE_NAME, ids))
                return int(
                    cursor.execute(
                        f"UPDATE async_events SET queue_name = %s, id = {new_id} WHERE {_in(ids)}",
                        (QUEUE_NAME, *id_args, *ids),
                    )
                )

            count = self.session.transaction(move)
            moved += count
            if count < chunk or (limit and moved >= limit):
                if moved:
                    self.ring()
                return moved

    # --- dead letters ---------------------------------------------------------------------

    def dead_letters(self, start: int = 0, count: int = 50) -> list[DeadLetter]:
        """Dead letters, newest first."""

        def read(cursor: Cursor) -> list[Row]:
            cursor.execute(
                f"SELECT seq, {MESSAGE_COLUMNS}, reason, worker, at, traceback "
                "FROM tuitop_dead_letters ORDER BY seq DESC LIMIT %s OFFSET %s",
                (count, start),
            )
            return list(cursor.fetchall())

        return [_dead_letter(row) for row in self.session.run(read)]

    def dead_letter_count(self) -> int:
        def ask(cursor: Cursor) -> int:
            cursor.execute("SELECT COUNT(*) FROM tuitop_dead_letters")
            (count,) = cursor.fetchone() or (0,)
            return int(count)

        return self.session.run(ask)

    def replay(self, letter: DeadLetter, *, from_oldest: bool = False) -> bool:
        """Puts a dead letter back at the end of Tuleap's queue (a new id: taken after
        what waits) with a fresh try count, in one transaction; False when it was no
        longer there (replayed or purged by someone else)."""
        return self.session.transaction(_replaying(letter.entry.decode("ascii", "replace")))

    def replay_all(self, chunk: int = 1000) -> int:
        """Replays every dead letter there is when it is called, oldest first; those that
        die again meanwhile are not replayed twice, and one whose payload Tuleap's table
        refuses (a handler's replacement nested deeper than its JSON check reads) stays,
        the others going on. Returns how many were replayed."""

        def last(cursor: Cursor) -> int:
            cursor.execute("SELECT COALESCE(MAX(seq), 0) FROM tuitop_dead_letters")
            (seq,) = cursor.fetchone() or (0,)
            return int(seq)

        until, after, replayed = self.session.run(last), 0, 0
        while True:

            def next_chunk(cursor: Cursor, after: int = after) -> list[int]:
                cursor.execute(
                    "SELECT seq FROM tuitop_dead_letters WHERE seq > %s AND seq <= %s "
                    "ORDER BY seq LIMIT %s",
                    (after, until, chunk),
                )
                return [int(seq) for (seq,) in cursor.fetchall()]

            seqs = self.session.run(next_chunk)
            if not seqs:
                return replayed
            for seq in seqs:
                try:
                    replayed += self.session.transaction(_replaying(str(seq)))
                except pymysql.MySQLError as error:
                    if _code(error) not in JSON_REFUSED:
                        raise
            after = seqs[-1]

    def purge_dead_letters(self) -> int:
        """Deletes every dead letter; returns how many there were."""
        return int(
            self.session.run(lambda cursor: cursor.execute("DELETE FROM tuitop_dead_letters"))
        )

    # --- internals --------------------------------------------------------------------------

    def _reschedule(
        self,
        cursor: Cursor,
        message: Message,
        reason: str,
        worker_id: str,
        *,
        traceback: str = "",
        retryable: bool = True,
        replacement: str | None = None,
    ) -> Outcome:
        """Copies a message coming back from the worker's hands (its row locked) to where
        :meth:`RetryPolicy.decide` sends it — a retry with one try more, or the dead
        letters with why — with ``replacement`` for its payload when given; returns that
        outcome (RETRIED or DEAD). The caller deletes the row it came from."""
        decision = self.retry_policy.decide(message, reason, retryable=retryable)
        payload = "payload" if replacement is None else "%s"
        args: list[Any] = [] if replacement is None else [replacement]
        if decision.retried:
            copy_rows(
                cursor,
                "tuitop_delayed",
                "tuitop_processing",
                [message.row_id or b""],
                select=(
                    f"queue_name, topic, {payload}, enqueue_timestamp, "
                    "enqueue_timestamp_microsecond, LEAST(nb_added_in_queue + 1, 255), "
                    f"{NOW} + %s"
                ),
                args=(*args, decision.delay),
                extra="due_at",
            )
            return Outcome.RETRIED
        # The replacement is what a replay sends (a notification without the mails
        # already delivered), as in a retry.
        columns = MESSAGE_COLUMNS.replace("payload", payload)
        cursor.execute(
            f"INSERT INTO tuitop_dead_letters ({MESSAGE_COLUMNS}, reason, worker, at, "
            f"traceback) SELECT {columns}, %s, %s, {NOW}, %s FROM tuitop_processing "
            "WHERE id = %s",
            (
                *args,
                fit(decision.why, REASON_BYTES),
                worker_id,
                fit(traceback, TRACEBACK_BYTES),
                message.row_id,
            ),
        )
        return Outcome.DEAD


def _replaying(seq: str) -> Callable[[Cursor], bool]:
    """The transaction that puts dead letter ``seq`` back at the end of Tuleap's queue (a
    new id, a fresh try count); False when it is no longer there."""

    def move(cursor: Cursor) -> bool:
        cursor.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM tuitop_dead_letters WHERE seq = %s FOR UPDATE",
            (seq,),
        )
        row = cursor.fetchone()
        if row is None:
            return False
        _, _, topic, payload, seconds, microseconds, _ = row
        execute_all(
            cursor,
            [
                (
                    f"INSERT INTO async_events ({MESSAGE_COLUMNS}) "
                    "VALUES (%s, %s, %s, %s, %s, %s, 0)",
                    (uuid7(), QUEUE_NAME, topic, payload, seconds, microseconds),
                ),
                ("DELETE FROM tuitop_dead_letters WHERE seq = %s", (seq,)),
            ],
        )
        return True

    return move


def _dead_letter(row: Row) -> DeadLetter:
    seq, *columns = row[:8]
    reason, worker, at, traceback = row[8:12]
    message = row_message(tuple(columns))
    return DeadLetter(
        message=message.raw,
        reason=str(reason),
        worker=str(worker),
        at=float(at),
        tries=message.queued_total,
        topic=message.topic if message.problem is None else str(columns[2]),
        traceback=str(traceback),
        entry=str(seq).encode(),
    )
