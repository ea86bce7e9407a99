"""Tuleap's database queue (Tuleap ≥ 15.9): its ``async_events`` table, and tuitop's own
tables beside it (:mod:`.schema`), through PyMySQL (:mod:`.connection`)."""

from tuitop.backends.db.channel import DbChannel
from tuitop.backends.db.connection import ERRORS, describe_error
from tuitop.backends.db.pool import DbPoolStore
from tuitop.backends.db.queue import DbQueue

__all__ = ["ERRORS", "DbChannel", "DbPoolStore", "DbQueue", "describe_error"]
