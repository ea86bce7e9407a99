"""Tuleap's queue table, and tuitop's own tables beside it (created by tuitop, never
altering Tuleap's).

Tuleap's ``async_events`` is the queue: front ends insert into it, and a message waiting
there is a row of it with ``queue_name = 'app_user_events'``. A message tuitop takes moves,
whole and in one transaction, into one of its own tables (the same columns, and what the
place needs), so that it is at every moment in exactly one place:

=====================  ==============================================================
``async_events``        waiting: in Tuleap's queue, or a lane's (its ``queue_name``)
``tuitop_processing``   in a worker's hands (``worker_id``): recovered when it is gone
``tuitop_delayed``      waiting for its retry (``due_at``, by the database's clock)
``tuitop_dead_letters`` given up, with why
=====================  ==============================================================

The rest is what the views read without Redis: workers' and pools' heartbeats, the config
in force, the stats buckets, the lanes pools serve (``tuitop_lanes``, with when one last
said so), the push markers, and the doorbell counter (``tuitop_bell``:
bumped by whoever puts a message back where workers take, so that the pools' doorbells
see an old id come back, not only new rows).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from pymysql.cursors import Cursor

QUEUE_NAME = "app_user_events"

TULEAP_QUEUE_DDL = """
CREATE TABLE IF NOT EXISTS async_events (
    id BINARY(16) NOT NULL PRIMARY KEY,
    queue_name VARCHAR(255) NOT NULL,
    topic VARCHAR(255) NOT NULL,
    payload JSON NOT NULL,
    enqueue_timestamp INT UNSIGNED NOT NULL,
    enqueue_timestamp_microsecond MEDIUMINT UNSIGNED NOT NULL,
    nb_added_in_queue TINYINT UNSIGNED NOT NULL,
    INDEX idx_queue_name (queue_name)
)"""
"""Tuleap's DDL (``src/db/mysql/database_structure.sql``): Tuleap's installer creates it;
tuitop creates it only for a database of its own (the demo, the tests)."""

MESSAGE_COLUMNS = (
    "id, queue_name, topic, payload, enqueue_timestamp, enqueue_timestamp_microsecond, "
    "nb_added_in_queue"
)
_MESSAGE_DDL = """
    id BINARY(16) NOT NULL PRIMARY KEY,
    queue_name VARCHAR(255) NOT NULL,
    topic VARCHAR(255) NOT NULL,
    payload LONGTEXT NOT NULL,
    enqueue_timestamp INT UNSIGNED NOT NULL,
    enqueue_timestamp_microsecond MEDIUMINT UNSIGNED NOT NULL,
    nb_added_in_queue TINYINT UNSIGNED NOT NULL"""

TABLES = (
    f"""CREATE TABLE IF NOT EXISTS tuitop_processing ({_MESSAGE_DDL},
    worker_id VARCHAR(255) NOT NULL,
    taken_at DOUBLE NOT NULL,
    INDEX tuitop_processing_worker (worker_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    f"""CREATE TABLE IF NOT EXISTS tuitop_delayed ({_MESSAGE_DDL},
    due_at DOUBLE NOT NULL,
    INDEX tuitop_delayed_due (due_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS tuitop_dead_letters (
    seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id BINARY(16) NOT NULL,
    queue_name VARCHAR(255) NOT NULL,
    topic VARCHAR(255) NOT NULL,
    payload LONGTEXT NOT NULL,
    enqueue_timestamp INT UNSIGNED NOT NULL,
    enqueue_timestamp_microsecond MEDIUMINT UNSIGNED NOT NULL,
    nb_added_in_queue TINYINT UNSIGNED NOT NULL,
    reason TEXT NOT NULL,
    worker VARCHAR(255) NOT NULL,
    at DOUBLE NOT NULL,
    traceback MEDIUMTEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS tuitop_workers (
    id VARCHAR(255) NOT NULL PRIMARY KEY,
    pool VARCHAR(255) NOT NULL,
    expires_at DOUBLE NOT NULL,
    beat TEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS tuitop_pools (
    name VARCHAR(255) NOT NULL PRIMARY KEY,
    owner VARCHAR(255) NOT NULL,
    claimed_until DOUBLE NOT NULL,
    expires_at DOUBLE NOT NULL,
    beat TEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS tuitop_config (
    one TINYINT UNSIGNED NOT NULL PRIMARY KEY,
    version BIGINT UNSIGNED NOT NULL,
    fields TEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS tuitop_stats (
    bucket INT UNSIGNED NOT NULL,
    name VARCHAR(191) NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (bucket, name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS tuitop_push_markers (
    token CHAR(32) NOT NULL PRIMARY KEY,
    at DOUBLE NOT NULL,
    INDEX tuitop_push_markers_at (at)
) ENGINE=InnoDB DEFAULT CHARSET=ascii""",
    """CREATE TABLE IF NOT EXISTS tuitop_lanes (
    lane VARCHAR(64) NOT NULL PRIMARY KEY,
    served_at DOUBLE NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS tuitop_control (
    seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    pool VARCHAR(255) NOT NULL,
    body TEXT NOT NULL,
    at DOUBLE NOT NULL,
    INDEX tuitop_control_pool (pool, seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS tuitop_control_replies (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    body TEXT NOT NULL,
    at DOUBLE NOT NULL,
    INDEX tuitop_control_replies_at (at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS tuitop_bell (
    one TINYINT UNSIGNED NOT NULL PRIMARY KEY,
    bell BIGINT UNSIGNED NOT NULL
) ENGINE=InnoDB""",
)

REASON_BYTES = 65_535
"""What ``tuitop_dead_letters.reason`` holds (TEXT): a relay's 150-line answer, a handler's
long exception, is cut to it (:func:`fit`) — strict mode refuses a longer value, and the
move would fail at every try, the message stuck in a live worker's hands."""
TRACEBACK_BYTES = 16_777_215
"""What ``tuitop_dead_letters.traceback`` holds (MEDIUMTEXT)."""
TEXT_BYTES = 65_535
"""What the other TEXT columns hold: a heartbeat (a pool's lists its workers and its
``$sys_async_emails``: a forge's thousands of project ids), the config a pool publishes,
a reply to a command (:func:`fit_json`)."""
_CUT = "\n… ({} bytes cut to fit the column)"


def fit(text: str, limit: int) -> str:
    """``text`` as a column of ``limit`` bytes takes it: whole when its UTF-8 fits, else
    its beginning, cut at a character's boundary, with how much was cut said at its
    end. A lone surrogate (a JSON payload's ``"\ud800"`` quoted by a handler, stderr
    decoded with surrogateescape), which no UTF-8 can say and the driver refuses to
    send, is written as its escape, ``\ud800``."""
    text = storable(text)
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    note_room = len(_CUT.format(len(data)).encode())
    kept = data[: limit - note_room].decode("utf-8", "ignore")
    return kept + _CUT.format(len(data) - len(kept.encode("utf-8")))


def storable(text: str) -> str:
    """``text`` with its lone surrogates written as escapes (``\udcff``): text every
    UTF-8 column takes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def fit_json(fields: Mapping[str, object], limit: int = TEXT_BYTES) -> str:
    """``fields`` as the JSON object a column of ``limit`` bytes takes: whole when it fits,
    else with its longest text values cut (:func:`fit`) to one common length, so that
    each keeps as much as the others — still an object every view reads, never a write
    strict mode refuses at every try."""
    document = dict(fields)
    text = json.dumps(document)  # ASCII: its length is its size in bytes
    margin = 0
    while len(text) > limit:
        texts = {name: value for name, value in document.items() if isinstance(value, str)}
        texts = {name: value for name, value in texts.items() if value}
        if not texts:
            raise ValueError(f"no text of these fields can be cut to {limit} bytes")
        sizes = {name: len(json.dumps(value)) for name, value in texts.items()}
        room = limit - (len(text) - sum(sizes.values())) - margin - 64 * len(texts)
        level = _water_level(sorted(sizes.values(), reverse=True), room)
        for name, value in texts.items():
            if sizes[name] > level:
                # JSON's escapes: a value's bytes are cut in the share its text is.
                size = len(storable(value).encode("utf-8"))
                kept = size * level // sizes[name]
                document[name] = fit(value, kept) if kept > len(_CUT.format(size)) else ""
        text = json.dumps(document)
        margin = 2 * margin + 64
    return text


def _water_level(sizes: list[int], room: int) -> int:
    """The length ``L`` to cut the largest of ``sizes`` (descending) to, so that the sum
    of each cut to ``L`` at most is within ``room``."""
    for count in range(1, len(sizes) + 1):
        rest = sum(sizes[count:])
        level = (room - rest) // count
        if count == len(sizes) or level >= sizes[count]:
            return max(level, 0)
    return 0


NOW = "UNIX_TIMESTAMP(NOW(6))"
"""The database's clock, in Unix seconds (sessions run in UTC): every due time, heartbeat
and lease is read against it, as in Redis against Redis' TIME — hosts' clocks may differ."""


def create_tables(cursor: Cursor) -> None:
    """Creates tuitop's tables where they are missing (never Tuleap's): a user without
    the CREATE privilege works once they exist."""
    cursor.execute(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
        "AND TABLE_NAME LIKE 'tuitop\\_%%'"
    )
    there = {str(name) for (name,) in cursor.fetchall()}
    for statement in TABLES:
        if _table_name(statement) not in there:
            cursor.execute(statement)
    cursor.execute("SELECT 1 FROM tuitop_bell WHERE one = 1")
    if cursor.fetchone() is None:
        cursor.execute("INSERT IGNORE INTO tuitop_bell (one, bell) VALUES (1, 0)")


def _table_name(statement: str) -> str:
    return statement.split("IF NOT EXISTS", 1)[1].split()[0]


def create_tuleap_queue(cursor: Cursor) -> None:
    """Tuleap's ``async_events``, for a database that is tuitop's own (demo, tests)."""
    cursor.execute(TULEAP_QUEUE_DDL)
