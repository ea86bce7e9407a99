"""What a pool does in Tuleap's database (:class:`~tuitop.backends.base.PoolStore`).

The pool's name lease, its heartbeat and the config it publishes are rows of tuitop's own
tables, read against the database's clock. Lanes are ``queue_name`` values of Tuleap's
table (:mod:`.lanes`): the pools say which they serve every tick (``tuitop_lanes``), and a
lane no pool serves any more goes back to Tuleap's ``app_user_events``, as in Redis.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping

import pymysql
from pymysql.cursors import Cursor

from tuitop.backends.base import COMMAND_TTL, LeftBehind, Recovery, RetryPolicy, TimedOut
from tuitop.backends.db.connection import (
    ERRORS,
    database_clock,
    execute_all,
    placeholders,
    translate,
)
from tuitop.backends.db.dialect import NEW_ROW
from tuitop.backends.db.doorbell import Doorbell
from tuitop.backends.db.queue import DbQueue
from tuitop.backends.db.schema import NOW, QUEUE_NAME, TEXT_BYTES, create_tables, fit_json
from tuitop.backends.errors import at_the_edge
from tuitop.beats import PoolBeat, json_fields
from tuitop.config import DatabaseSettings
from tuitop.lanes import DEFAULT_LANE, is_lane_name, lane_queue
from tuitop.stats import DEPTH, bucket_start

DEPTH_CAP = 100_000
"""The queue's depth is counted up to this many rows (a count costs a row read each): past
it a view says "100,000+"."""
STATS_KEEP_SECONDS = 15 * 60
FORGET_POOLS_AFTER = 60.0
LOCK_WAIT_TIMEOUT = 1205
LANE_BACK_PER_SCAN = 20_000
"""Rows of one unserved lane moved back by one scan (every 5 s)."""
"""A pool with neither heartbeat nor claim for this long is forgotten."""


def capped_count_sql(cap: int = DEPTH_CAP) -> str:
    """The rows of one ``queue_name`` (argument), counted up to ``cap`` (an index range)."""
    return (
        "SELECT COUNT(*) FROM (SELECT 1 FROM async_events WHERE queue_name = %s "
        f"LIMIT {int(cap)}) AS waiting"
    )


def waiting(cursor: Cursor) -> int:
    """The rows waiting in Tuleap's queue and every lane's, each counted up to the cap."""
    cursor.execute("SELECT lane FROM tuitop_lanes")
    lanes = [str(lane) for (lane,) in cursor.fetchall()]
    names = [QUEUE_NAME, *(lane_queue(lane) for lane in lanes if is_lane_name(lane))]
    total = 0
    for queue_name in names:
        cursor.execute(capped_count_sql(), (queue_name,))
        (count,) = cursor.fetchone() or (0,)
        total += int(count)
    return total


@at_the_edge(ERRORS, lambda self, error: translate(error, self.settings))
class DbPoolStore:
    """A pool's session with the database: its one connection, which its loop, its doorbell
    and its ``/metrics`` scrapes share (:class:`~.connection.Session` is thread-safe)."""

    def __init__(
        self,
        settings: DatabaseSettings,
        *,
        pool_name: str,
        retry: RetryPolicy,
        socket_timeout: float,
    ) -> None:
        self.settings = settings
        # A lock waited for less than the socket's timeout: a worker frozen mid-move
        # holding a row is a busy row (tried again at the next scan), not a server away.
        self.queue = DbQueue(
            settings,
            retry,
            program=f"tuitop:{pool_name}:pool",
            read_timeout=socket_timeout,
            lock_wait=max(int(socket_timeout) - 1, 1),
        )
        self.session = self.queue.session
        self._tables_checked = False
        self._sampled = 0
        """The stats bucket the queue's depth was last sampled into."""

    def ping(self) -> None:
        """Checks the server answers and has Tuleap's table; creates tuitop's tables at
        the first answer."""

        def check(cursor: Cursor) -> None:
            cursor.execute("SELECT 1 FROM async_events LIMIT 0")
            if not self._tables_checked:
                create_tables(cursor)
                self._tables_checked = True

        self.session.run(check)

    # --- the name, the heartbeat, the config -------------------------------------------

    def claim_name(self, name: str, token: str, ttl: int) -> bool:
        """One round trip: the upsert decides the owner in one statement (atomic), the
        read after it says who it is."""

        def claim(cursor: Cursor) -> bool:
            # The assignments run left to right: the second sees the owner just decided.
            execute_all(
                cursor,
                [
                    (
                        self.session.dialect.upsert(
                            "INSERT INTO tuitop_pools (name, owner, claimed_until, expires_at, "
                            f"beat) VALUES (%s, %s, {NOW} + %s, 0, '') ON DUPLICATE KEY "
                            f"UPDATE owner = IF(owner = {NEW_ROW}.owner OR claimed_until < "
                            f"{NOW}, {NEW_ROW}.owner, owner), claimed_until = "
                            f"IF(owner = {NEW_ROW}.owner, {NEW_ROW}.claimed_until, "
                            "claimed_until)"
                        ),
                        (name, token, ttl),
                    ),
                    ("SELECT owner FROM tuitop_pools WHERE name = %s", (name,)),
                ],
            )
            row = cursor.fetchone()
            return row is not None and row[0] == token

        return self.session.run(claim)

    def name_owner(self, name: str) -> str:
        def ask(cursor: Cursor) -> str:
            cursor.execute(
                f"SELECT owner FROM tuitop_pools WHERE name = %s AND claimed_until > {NOW}",
                (name,),
            )
            row = cursor.fetchone()
            return "" if row is None else str(row[0])

        return self.session.run(ask)

    def release_name(self, name: str, token: str) -> None:
        self.session.run(
            lambda cursor: cursor.execute(
                "DELETE FROM tuitop_pools WHERE name = %s AND owner = %s", (name, token)
            )
        )

    def publish(
        self, name: str, beat: PoolBeat, ttl: int, served: set[str], stopping: bool
    ) -> None:
        def write(cursor: Cursor) -> None:
            cursor.execute(
                f"UPDATE tuitop_pools SET expires_at = {NOW} + %s, beat = %s WHERE name = %s",
                (ttl, fit_json(beat.fields()), name),
            )
            lanes = sorted(served - {DEFAULT_LANE})
            if lanes and not stopping:
                values = ", ".join([f"(%s, {NOW})"] * len(lanes))
                cursor.execute(
                    self.session.dialect.upsert(
                        f"INSERT INTO tuitop_lanes (lane, served_at) VALUES {values} "
                        f"ON DUPLICATE KEY UPDATE served_at = {NEW_ROW}.served_at"
                    ),
                    lanes,
                )
            bucket = bucket_start(beat.beat)
            if stopping or bucket == self._sampled:
                return
            # The depth every view draws: one sample a stats bucket (10 s) is all a view
            # reads, and a count reads rows.
            self._sampled = bucket
            depth = waiting(cursor)
            cursor.execute(
                self.session.dialect.upsert(
                    "INSERT INTO tuitop_stats (bucket, name, count) VALUES (%s, %s, %s) "
                    f"ON DUPLICATE KEY UPDATE count = {NEW_ROW}.count"
                ),
                (bucket, DEPTH, int(depth)),
            )

        self.session.run(write)

    def publish_config(self, fields: Mapping[str, str | int | float]) -> None:
        self.session.run(
            lambda cursor: cursor.execute(
                self.session.dialect.upsert(
                    "INSERT INTO tuitop_config (one, version, fields) VALUES (1, 1, %s) "
                    f"ON DUPLICATE KEY UPDATE version = version + 1, fields = {NEW_ROW}.fields"
                ),
                (fit_json(fields),),
            )
        )

    # --- what workers held ---------------------------------------------------------------

    def recover(
        self,
        worker_id: str,
        reason: str,
        *,
        unless_beating: bool = False,
        traceback: str = "",
        timed_out: TimedOut | None = None,
    ) -> Recovery:
        try:
            return self.queue.recover(
                worker_id,
                reason,
                unless_beating=unless_beating,
                traceback=traceback,
                timed_out=timed_out,
            )
        except pymysql.err.OperationalError as error:
            if error.args[:1] != (LOCK_WAIT_TIMEOUT,):
                raise
            # A worker holds its rows in a transaction still (frozen mid-move: the server
            # ends it within its idle timeout): the next scan tries again; the server is
            # not away.
            return Recovery(0, 0)

    def move_due(self) -> int:
        return self.queue.move_due()

    def due_in(self) -> float | None:
        return self.queue.due_in()

    def silent_workers(self, ours: set[str]) -> list[str]:
        """Workers whose heartbeat expired, and whoever holds messages with no live row
        (a worker that took after its row was recovered, then died)."""

        def ask(cursor: Cursor) -> list[str]:
            cursor.execute(f"SELECT id FROM tuitop_workers WHERE expires_at <= {NOW}")
            silent = {str(worker_id) for (worker_id,) in cursor.fetchall()}
            cursor.execute(
                "SELECT DISTINCT p.worker_id FROM tuitop_processing p LEFT JOIN "
                "tuitop_workers w ON w.id = p.worker_id WHERE w.id IS NULL"
            )
            silent |= {str(worker_id) for (worker_id,) in cursor.fetchall()}
            return sorted(silent - ours)

        return self.session.run(ask)

    def clock(self) -> float:
        return database_clock(self.session)

    def take_commands(self, name: str, limit: int) -> list[bytes]:
        def take(cursor: Cursor) -> list[bytes]:
            # Locked: a sender withdrawing its command (no reply in time) waits for this
            # take, then finds it gone — a command is obeyed, or withdrawn, never both.
            cursor.execute(
                f"SELECT seq, body, at > {NOW} - %s FROM tuitop_control WHERE pool = %s "
                "ORDER BY seq LIMIT %s FOR UPDATE",
                (COMMAND_TTL, name, limit),
            )
            rows = cursor.fetchall()
            if not rows:
                return []
            seqs = [seq for seq, _, _ in rows]
            cursor.execute(
                f"DELETE FROM tuitop_control WHERE seq IN ({', '.join(['%s'] * len(seqs))})",
                seqs,
            )
            return [str(body).encode() for _, body, fresh in rows if fresh]

        return self.session.transaction(take)

    def reply(self, command_id: str, body: bytes) -> None:
        text = body.decode()
        if len(body) > TEXT_BYTES:  # what a pool said of a config that does not load
            text = fit_json(json.loads(text))

        def write(cursor: Cursor) -> None:
            cursor.execute(
                f"DELETE FROM tuitop_control_replies WHERE at < {NOW} - %s", (COMMAND_TTL,)
            )
            cursor.execute(
                f"REPLACE INTO tuitop_control_replies (id, body, at) VALUES (%s, %s, {NOW})",
                (command_id, text),
            )

        self.session.run(write)

    def forget_gone_pools(self) -> None:
        """Forgets pools long gone, and prunes the stats and push markers views no longer
        read."""

        def prune(cursor: Cursor) -> None:
            cursor.execute(
                f"DELETE FROM tuitop_pools WHERE GREATEST(expires_at, claimed_until) < {NOW} - %s",
                (FORGET_POOLS_AFTER,),
            )
            cursor.execute(
                f"DELETE FROM tuitop_stats WHERE bucket < {NOW} - %s LIMIT 10000",
                (STATS_KEEP_SECONDS,),
            )

        self.session.run(prune)

    def left_behind(self, hold_limit: float) -> list[LeftBehind]:
        """Nothing: Tuleap's database workers hold a row only inside their transaction,
        which the server rolls back when they die."""
        return []

    # --- lanes ---------------------------------------------------------------------------

    def unserved_lanes_back(self, unserved_after: float) -> dict[str, int]:
        """Up to :data:`LANE_BACK_PER_SCAN` rows a lane a call (a thousand a short
        transaction): the pool's loop is held up a second at most by a big one.
        Lanes holding rows no record lists (a take that routed and died before listing,
        one that routed as its empty lane was forgotten) are listed first: an index read."""
        self.list_forgotten_lanes()

        def stale(cursor: Cursor) -> list[str]:
            cursor.execute(
                f"SELECT lane FROM tuitop_lanes WHERE served_at < {NOW} - %s",
                (unserved_after,),
            )
            names = [str(lane) for (lane,) in cursor.fetchall()]
            junk = [name for name in names if not is_lane_name(name)]
            if junk:  # written by something else: no lane's rows to move
                cursor.execute(
                    f"DELETE FROM tuitop_lanes WHERE lane IN ({placeholders(len(junk))})", junk
                )
            return [name for name in names if is_lane_name(name)]

        moved: dict[str, int] = {}
        for lane in self.session.run(stale):
            count = self._move_back(lane, limit=LANE_BACK_PER_SCAN)
            if count:
                moved[lane] = count
            elif count == 0:
                self._forget_lane(lane, unserved_after)
        return moved

    def _forget_lane(self, lane: str, unserved_after: float) -> None:
        """An empty lane no pool serves leaves the list (unless a pool said meanwhile)."""

        def forget(cursor: Cursor) -> None:
            cursor.execute(
                f"DELETE FROM tuitop_lanes WHERE lane = %s AND served_at < {NOW} - %s",
                (lane, unserved_after),
            )

        self.session.run(forget)

    def list_forgotten_lanes(self) -> list[str]:
        def listed(cursor: Cursor) -> set[str]:
            cursor.execute("SELECT lane FROM tuitop_lanes")
            return {str(lane) for (lane,) in cursor.fetchall()}

        known = self.session.run(listed)
        forgotten = [lane for lane in self.queue.lanes_holding() if lane not in known]

        def list_them(cursor: Cursor) -> None:
            for lane in forgotten:
                cursor.execute(
                    "INSERT IGNORE INTO tuitop_lanes (lane, served_at) VALUES (%s, 0)", (lane,)
                )

        if forgotten:
            self.session.run(list_them)
        return forgotten

    def release_lanes(self, name: str, lanes: set[str]) -> dict[str, int]:
        def others(cursor: Cursor) -> set[str]:
            cursor.execute(
                f"SELECT beat FROM tuitop_pools WHERE name <> %s AND expires_at > {NOW}",
                (name,),
            )
            return {
                lane
                for (beat,) in cursor.fetchall()
                for lane in PoolBeat.parse(json_fields(beat)).served
            }

        still = self.session.run(others)
        moved = {lane: self._move_back(lane) for lane in sorted(lanes - still - {DEFAULT_LANE})}
        return {lane: count for lane, count in moved.items() if count}

    def _move_back(self, lane: str, limit: int = 0) -> int:
        """A lane's rows back to Tuleap's queue; -1 when a row is held too long to wait
        for (a worker frozen in its take: the next scan tries again)."""
        try:
            return self.queue.move_lane_back(lane, limit)
        except pymysql.err.OperationalError as error:
            if error.args[:1] != (LOCK_WAIT_TIMEOUT,):
                raise
            return -1

    # --- the rest ------------------------------------------------------------------------

    def holds(self) -> tuple[int, int]:
        def ask(cursor: Cursor) -> tuple[int, int]:
            queued = waiting(cursor)
            cursor.execute("SELECT COUNT(*) FROM tuitop_delayed")
            (delayed,) = cursor.fetchone() or (0,)
            return queued, int(delayed)

        return self.session.run(ask)

    def watch_mailbox(self, name: str, wake: Callable[[], None], logger: logging.Logger) -> None:
        return None  # no wait on a table: the loop reads the mailbox every tick

    def doorbell(
        self,
        in_force: Callable[[], bool],
        any_idle: Callable[[], bool],
        ring_idle: Callable[[], None],
        logger: logging.Logger,
        interval: float,
    ) -> Doorbell:
        return Doorbell(
            lambda: self.session if in_force() else None, any_idle, ring_idle, logger, interval
        )

    def close(self) -> None:
        self.queue.close()
