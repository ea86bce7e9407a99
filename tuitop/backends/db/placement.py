"""Where a row put back into Tuleap's queue goes: taken next, and waiting for no one's lock.

Tuleap's own worker (``DBPersistentQueue::listen``) takes a row with ``SELECT … ORDER BY
id LIMIT 1 FOR UPDATE SKIP LOCKED`` in REPEATABLE READ (PDO's, and the server's, default)
and keeps its transaction open while its task runs — up to 15 minutes. InnoDB's next-key
lock on that row covers the gap before it (MySQL 8.4 manual §17.7.1, *InnoDB Locking*:
next-key locks; an insert into a locked gap waits for its insert-intention lock). A row
that tuitop puts back under its old id — a retry falling due, a message given back, a
lane's rows moved back: older than the rows that wait, so before them — lands in that
gap and waits as long as Tuleap's task runs (error 1205 at each try meanwhile).

So such rows get new ids: in the gap just before the first row of the queue no
transaction holds (found with ``SKIP LOCKED`` and locked by the move itself, in READ
COMMITTED: a record lock, no gap), after the row before it (read plainly, held or not).
Every row before it is held by someone — Tuleap's worker, or a take under way — and the
gap between the last of those and it is nobody's: the rows land there, spread over it
(room is left for the next placement: rows packed at consecutive ids left the next one
none, with Tuleap's worker holding the first of them), in their old order, and are taken
next, as their old ids had them. With every row held, or no room in that gap, they go
after the last one. tuitop's own takes (READ COMMITTED) lock no gap: among
tuitop's workers alone the old ids would do, but a forge may run both, and one way for
every case is simpler to trust.

An id is Tuleap's 16 bytes read as one big-endian number (``ORDER BY id`` compares them
so); two rows' UUIDv7 ids a millisecond apart are 2^80 apart: each placement halves a gap at
worst, and some 60 fit in one between rows made in one millisecond. A
rare collision with a row there already is :func:`~tuitop.backends.db.queue.copy_rows`'
to handle (a fresh id).
"""

from __future__ import annotations

from collections.abc import Sequence

from pymysql.cursors import Cursor

ID_BYTES = 16
_ID_LIMIT = 1 << (8 * ID_BYTES)
_SPAN = 1 << 80
"""A millisecond of UUIDv7 ids: how far rows placed where no row bounds them spread."""


def placed_ids(cursor: Cursor, queue_name: str, old_ids: Sequence[bytes]) -> dict[bytes, bytes]:
    """New ids (old → new) for the rows ``old_ids`` put back into ``queue_name``, in the
    transaction of the move: ascending as the old ones are, between the first row no
    transaction holds (locked now) and the row before it (held: its gap is locked), or
    after the last row when every one is held or that gap has no room. Spread over the
    gap, never packed: rows placed now leave room between them and their neighbours for
    the next placement (rows placed at consecutive ids left none — the next one, with
    Tuleap's worker holding the first of them, fell on its id or into its locked gap).
    Empty when the queue holds no row (the rows keep their ids) or no id fits."""
    if not old_ids:
        return {}
    count = len(old_ids)
    cursor.execute(
        "SELECT id FROM async_events WHERE queue_name = %s ORDER BY id LIMIT 1 "
        "FOR UPDATE SKIP LOCKED",
        (queue_name,),
    )
    row = cursor.fetchone()
    gap: tuple[int, int] | None = None
    if row is not None:
        high = _number(row[0])
        # A plain read (READ COMMITTED): the rows held before it are seen, not waited for.
        cursor.execute(
            "SELECT MAX(id) FROM async_events WHERE queue_name = %s AND id < %s",
            (queue_name, bytes(row[0])),
        )
        (before,) = cursor.fetchone() or (None,)
        low = max(high - _SPAN, -1) if before is None else _number(before)
        if high - low > count:
            gap = (low, high)
    if gap is None:
        cursor.execute("SELECT MAX(id) FROM async_events WHERE queue_name = %s", (queue_name,))
        (last,) = cursor.fetchone() or (None,)
        if last is None:
            return {}
        low = _number(last)
        gap = (low, min(low + _SPAN, _ID_LIMIT))
        if gap[1] - gap[0] <= count:
            return {}
    low, high = gap
    step = (high - low) // (count + 1)
    ordered = sorted(bytes(old) for old in old_ids)
    return {
        old: (low + step * (index + 1)).to_bytes(ID_BYTES, "big")
        for index, old in enumerate(ordered)
    }


def _number(row_id: bytes) -> int:
    return int.from_bytes(bytes(row_id).rjust(ID_BYTES, b"\0")[:ID_BYTES], "big")
