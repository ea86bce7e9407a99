"""What a view reads from Tuleap's database (:class:`~tuitop.backends.base.StoreView`),
and the queue as the CLI and the producers use it."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from pymysql.cursors import Cursor

from tuitop.backends.base import HELD_SHOWN
from tuitop.backends.db.connection import ERRORS, Session, database_clock, translate
from tuitop.backends.db.queue import DbQueue
from tuitop.backends.db.schema import NOW, create_tables
from tuitop.backends.db.snapshot import read_stats, take_db_snapshot
from tuitop.backends.errors import at_the_edge
from tuitop.beats import json_fields
from tuitop.config import DatabaseSettings
from tuitop.lanes import LaneSet
from tuitop.message import Message
from tuitop.snapshot import Snapshot
from tuitop.stats import WindowStats

REPLY_POLL = 0.1
"""Seconds between two looks for a pool's reply (the database has no blocking read)."""


@at_the_edge(ERRORS, lambda self, error: translate(error, self.settings))
class DbAdmin(DbQueue):
    """The queue as the CLI, the producers and the dead-letter screen use it: tuitop's
    tables are made at the first use (a CLI may come before any pool)."""

    def __init__(
        self, settings: DatabaseSettings, program: str, session: Session | None = None
    ) -> None:
        """``session``: another's to share (a pool's: its ``/metrics`` reads on it)."""
        super().__init__(settings, program=program, read_timeout=10.0, session=session)
        self._tables_made = False

    def _ready(self, cursor: Cursor) -> None:
        if not self._tables_made:
            create_tables(cursor)
            self._tables_made = True

    def prepare(self) -> DbAdmin:
        """Makes tuitop's tables where they are missing; returns itself."""
        self.session.run(self._ready)
        return self

    def held(self, worker_id: str, limit: int | None = HELD_SHOWN) -> list[Message]:
        """At most HELD_SHOWN of what a worker holds, oldest first: an admin reads a
        view's worth, whatever a batch holds."""
        return super().held(worker_id, limit)

    dead_letters_at = "tuitop_dead_letters"

    def tuleap_left(self) -> None:
        return None  # Tuleap's database workers hold a message only in their transaction

    def send_command(self, pool: str, body: bytes) -> None:
        def write(cursor: Cursor) -> None:
            self._ready(cursor)
            cursor.execute(
                f"INSERT INTO tuitop_control (pool, body, at) VALUES (%s, %s, {NOW})",
                (pool, body.decode()),
            )

        self.session.run(write)

    def clock(self) -> float:
        return database_clock(self.session)

    def withdraw_command(self, pool: str, body: bytes) -> bool:
        # The pool takes with its rows locked: this waits for its take and finds none.
        return bool(
            self.session.run(
                lambda cursor: cursor.execute(
                    "DELETE FROM tuitop_control WHERE pool = %s AND body = %s",
                    (pool, body.decode()),
                )
            )
        )

    def wait_reply(self, command_id: str, timeout: float) -> bytes | None:
        def read(cursor: Cursor) -> bytes | None:
            cursor.execute("SELECT body FROM tuitop_control_replies WHERE id = %s", (command_id,))
            row = cursor.fetchone()
            if row is None:
                return None
            cursor.execute("DELETE FROM tuitop_control_replies WHERE id = %s", (command_id,))
            return str(row[0]).encode()

        deadline = time.monotonic() + timeout
        while True:
            found = self.session.run(read)
            if found is not None or time.monotonic() >= deadline:
                return found
            time.sleep(min(REPLY_POLL, max(deadline - time.monotonic(), 0)))

    def published_config(self) -> Mapping[str, str]:
        def read(cursor: Cursor) -> Mapping[str, str]:
            cursor.execute("SELECT fields FROM tuitop_config WHERE one = 1")
            row = cursor.fetchone()
            fields = json_fields(row[0] if row else None)
            return {k.decode(): v.decode() for k, v in fields.items()}

        return self.session.run(read)


@dataclass(frozen=True)
class ConnectionRoom:
    """How many connections the server lets in, and how many are in use (the one that
    asked left out): for the whole server (``max_connections``), and for Tuleap's
    account, which the front ends and the workers share (``max_user_connections``, 0
    when the account has no limit of its own)."""

    allowed: int
    in_use: int
    account_allowed: int
    account_in_use: int


_LIMITS = (
    "SELECT @@GLOBAL.max_connections, @@SESSION.max_user_connections, "
    "(SELECT COUNT(*) FROM information_schema.PROCESSLIST "
    "WHERE USER = SUBSTRING_INDEX(CURRENT_USER(), '@', 1))"
)
"""The server's limit; the account's (its own, else the global one: the session's value);
the account's connections (a user without the PROCESS privilege sees only its own)."""


@at_the_edge(ERRORS, lambda self, error: translate(error, self.settings))
class DbView:
    """Snapshots of the database, ``lanes`` naming the lane of each topic."""

    def __init__(
        self,
        settings: DatabaseSettings,
        lanes: LaneSet,
        program: str,
        session: Session | None = None,
    ) -> None:
        """``session``: another's to share, left open by :meth:`close`."""
        self.settings = settings
        self.lanes = lanes
        self.admin = DbAdmin(settings, program, session)
        self._shared = session is not None

    def snapshot(self, now: float) -> Snapshot:
        def read(cursor: Cursor) -> Snapshot:
            self.admin._ready(cursor)
            return take_db_snapshot(cursor, self.lanes, now)

        return self.admin.session.run(read)

    def stats(self, now: float, seconds: int) -> WindowStats:
        return self.admin.session.run(lambda cursor: read_stats(cursor, now, seconds))

    def queue(self) -> DbAdmin:
        return self.admin

    def connection_room(self) -> ConnectionRoom:
        """The server's connection limits and use now (``tuitop check``)."""

        def read(cursor: Cursor) -> ConnectionRoom:
            # Both flavours (MySQL 8 has no status table in information_schema).
            cursor.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
            _, in_use = cursor.fetchone() or ("", 0)
            cursor.execute(_LIMITS)
            allowed, account, account_in_use = cursor.fetchone() or (0, 0, 0)
            return ConnectionRoom(
                allowed=int(allowed),
                in_use=max(int(in_use) - 1, 0),
                account_allowed=max(int(account), 0),
                account_in_use=max(int(account_in_use) - 1, 0),
            )

        return self.admin.session.run(read)

    dead_letters_at = "tuitop_dead_letters"

    def tuleap_left(self) -> None:
        return None  # Tuleap's database workers hold a message only in their transaction

    def close(self) -> None:
        if not self._shared:
            self.admin.close()
