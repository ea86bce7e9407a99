"""Where a row put back into Tuleap's queue goes: taken next, and waiting for no one's lock.

Tuleap's own worker (``DBPersistentQueue::listen``) takes a row with ``SELECT … ORDER BY
id LIMIT 1 FOR UPDATE SKIP LOCKED`` in REPEATABLE READ (PDO's, and the server's, default)
and keeps its transaction open while its task runs — up to 15 minutes. InnoDB's next-key
lock on that row covers the gap before it (MySQL 8.4 manual §17.7.1, *InnoDB Locking*:
next-key locks; an insert into a locked gap waits for its insert-intention lock). A row
that tuitop puts back under its old id — a retry falling due, a message given back, a
lane's rows moved back: older than the rows that wait, so before them — lands in that
gap and waits as long as Tuleap's task runs (error 1205 at each try meanwhile).

So such rows get new ids: just before the first row of the queue no transaction holds
(found with ``SKIP LOCKED`` and locked by the move itself, in READ COMMITTED: a record
lock, no gap). Every row before it is held by someone — Tuleap's worker, or a take under
way — and the gap between the last of those and it is nobody's: the rows land there,
in their old order, and are taken next, as their old ids had them. With every row held,
they go after the last one. tuitop's own takes (READ COMMITTED) lock no gap: among
tuitop's workers alone the old ids would do, but a forge may run both, and one way for
every case is simpler to trust.

An id is Tuleap's 16 bytes read as one big-endian number (``ORDER BY id`` compares them
so); two rows' UUIDv7 ids a millisecond apart are 2^74 apart: a thousand rows fit. A
rare collision with a row there already is :func:`~tuitop.backends.db.queue.copy_rows`'
to handle (a fresh id).
"""

from __future__ import annotations

from collections.abc import Sequence

from pymysql.cursors import Cursor

ID_BYTES = 16
_ID_LIMIT = 1 << (8 * ID_BYTES)


def placed_ids(cursor: Cursor, queue_name: str, old_ids: Sequence[bytes]) -> dict[bytes, bytes]:
    """New ids (old → new) for the rows ``old_ids`` put back into ``queue_name``, in the
    transaction of the move: ascending as the old ones are, just before the first row no
    transaction holds (locked now), or after the last row when every one is held. Empty
    when the queue holds no row (the rows keep their ids) or the ids do not fit there."""
    if not old_ids:
        return {}
    cursor.execute(
        "SELECT id FROM async_events WHERE queue_name = %s ORDER BY id LIMIT 1 "
        "FOR UPDATE SKIP LOCKED",
        (queue_name,),
    )
    row = cursor.fetchone()
    count = len(old_ids)
    if row is not None:
        first = _number(row[0]) - count
    else:
        cursor.execute("SELECT MAX(id) FROM async_events WHERE queue_name = %s", (queue_name,))
        (last,) = cursor.fetchone() or (None,)
        if last is None:
            return {}
        first = _number(last) + 1
    if first < 0 or first + count > _ID_LIMIT:
        return {}
    ordered = sorted(bytes(old) for old in old_ids)
    return {old: (first + index).to_bytes(ID_BYTES, "big") for index, old in enumerate(ordered)}


def _number(row_id: bytes) -> int:
    return int.from_bytes(bytes(row_id).rjust(ID_BYTES, b"\0")[:ID_BYTES], "big")
