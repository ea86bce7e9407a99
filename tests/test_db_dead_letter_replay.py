"""A dead letter on the database holds the replacement payload a handler gave (issue 23:
what a replay must send): one Tuleap's table refuses (MariaDB's JSON check reads no more
than 32 levels of nesting; MySQL's JSON type 100) cannot go back to the queue. Replaying
it says so; replaying them all must not stop at it and leave every later letter behind."""

from __future__ import annotations

import pytest

from tuitop.backends import open_queue, worker_channel
from tuitop.backends.base import RetryPolicy
from tuitop.backends.errors import StoreError
from tuitop.config import DB_QUEUE, DatabaseSettings, Settings
from tuitop.lanes import DEFAULT_LANE
from tuitop.message import encode

WORKER = "p/0#1"


def _nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return {"left": value}


def test_replay_all_goes_past_a_letter_tuleaps_table_refuses(database: DatabaseSettings) -> None:
    admin = open_queue(database, "tuitop:test")
    channel = worker_channel(
        Settings(database=database, queue=DB_QUEUE),
        serves=(DEFAULT_LANE,),
        retry=RetryPolicy(),
        client_name="tuitop:test",
        socket_timeout=5.0,
    )
    try:
        channel.start(WORKER)
        admin.push(encode("tuitop.noop", {"n": 1}))
        admin.push(encode("tuitop.noop", {"n": 2}))
        first, second = channel.take(WORKER, 2).messages
        # Its handler kept a replacement (PermanentFailure's payload) nested 200 deep.
        assert channel.fail(WORKER, first, "550", retryable=False, payload=_nested(200)) == "dead"
        assert channel.fail(WORKER, second, "550", retryable=False) == "dead"
        [_newest, oldest] = admin.dead_letters()  # newest first
        with pytest.raises(StoreError):  # said to the operator: the table refuses it
            admin.replay(oldest)
        assert admin.replay_all() == 1  # the other one, not an error at the first
        assert admin.dead_letter_count() == 1  # the refused one stays, for the operator
        assert [m.payload for m in channel.take(WORKER, 10).messages] == [{"n": 2}]
    finally:
        channel.close()
        admin.close()
