"""Commands from a view to a pool anywhere (:mod:`tuitop.control`): the UI side of
``tuitop ctl``, for ``tuitop top``'s keys."""

from __future__ import annotations

from dataclasses import dataclass

from tuitop import control
from tuitop.backends import open_queue
from tuitop.backends.errors import StoreError
from tuitop.tui.source import SnapshotSource

REPLY_TIMEOUT = 5.0
"""Seconds to wait for a pool's reply: it reads its mailbox every second."""
PROGRAM = "tuitop top"


@dataclass(frozen=True)
class Outcome:
    """What a command came to, as the UI says it."""

    ok: bool
    said: str


def send(
    source: SnapshotSource, pool: str, command: control.Command, timeout: float = REPLY_TIMEOUT
) -> Outcome:
    """Sends ``command`` to ``pool`` through the store in force and waits for the reply
    (blocking: call it off the UI thread). Never raises for the store: a store that does
    not answer, or no reply in time, is an Outcome that says so (the password masked).

    A connection of its own, opened and closed here: the snapshots go on meanwhile (the
    source's own is held one conversation at a time)."""
    store = source.settings.store
    if not store.configured:
        return Outcome(False, "no store is configured")
    try:
        queue = open_queue(store, "tuitop:top")
        try:
            reply = control.send(queue, pool, command, timeout)
        finally:
            queue.close()
    except StoreError as error:
        return Outcome(False, str(error))
    if isinstance(reply, control.NoReply):
        return Outcome(False, reply.describe())
    return Outcome(reply.ok, reply.said if reply.ok else f"refused: {reply.said}")
