"""Remote control of a pool: the commands `tuitop ctl` and `tuitop top` send through the
store, and the pool's replies.

Each pool has a mailbox in its store (Redis: the list ``tuitop:pool:<name>:control``; the
database: rows of ``tuitop_control``). A sender puts one JSON command there and waits for
the reply under the command's id (Redis: the list ``tuitop:control:reply:<id>``, kept a
minute; the database: a row of ``tuitop_control_replies``). The pool reads its mailbox once
a tick (1 s), before it plans its workers, obeys, logs who asked what and when, and
replies what it did or why it refused.

Exactly once: a command is taken from the mailbox by one pool once (Redis' LPOP; the
database's rows locked, then deleted). A sender that got no reply in time *withdraws* it
(LREM; DELETE): withdrawn, it was never taken and nothing was done — the operator may send
it again, and it is not obeyed twice; not withdrawn, the pool took it, and the sender waits
a little longer for its reply, then says it may have been obeyed. A command names the run
of the pool it is for (``to``: the pool's ``instance``, read from its heartbeat): a pool
started later under the same name refuses what was sent to the one before (a ``stop`` to a
dead pool never stops its successor).

Anyone who can write to the store can send these, as anyone who can write there can
already push, delete or reorder the queue itself: the store's password is the boundary.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import socket
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from tuitop.backends.base import COMMAND_TTL
from tuitop.backends.errors import StoreError
from tuitop.config import MAX_WORKERS

if TYPE_CHECKING:
    from tuitop.backends.base import QueueAdmin

ACTIONS = ("scale", "workers", "pause", "resume", "reload", "stop")
"""scale ±N (for the session, as + and -), workers N (the session's count), pause and
resume (the pool, or one lane of it), reload (the config files), stop (warm)."""
REPLY_GRACE = 5.0
"""Seconds a sender waits on for the reply to a command it could not withdraw (taken
by the pool just then): a pool replies within its tick."""
MAX_TEXT = 200
"""The longest ``by`` and ``lane`` kept: anyone may write a command."""
COMMAND_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""What a command's id may be: it names the key (the row) the reply goes to, so it is
refused rather than cut or trusted (a lone surrogate is no key at all)."""


class CommandError(ValueError):
    """A command that cannot be read or obeyed; the text says why."""


@dataclass(frozen=True)
class Command:
    action: str
    value: int | None = None
    """scale: the step; workers: the count."""
    lane: str = ""
    """pause, resume: the lane ('' for the whole pool)."""
    by: str = ""
    """Who sent it: ``user@host (program)``."""
    at: float = 0.0
    id: str = ""
    to: str = ""
    """The run of the pool it is for (its heartbeat's ``instance``); '' for any run."""

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    def describe(self) -> str:
        """``scale +2``, ``pause lane latency_15m``, ``reload``: what it asks, briefly."""
        if self.action == "scale" and self.value is not None:
            return f"scale {self.value:+d}"
        if self.action == "workers":
            return f"workers {self.value}"
        if self.lane:
            return f"{self.action} lane {self.lane}"
        return self.action


def new_command(
    action: str, value: int | None = None, lane: str = "", program: str = "", to: str = ""
) -> Command:
    """A command from this process, with a fresh id, for the run ``to`` of a pool;
    CommandError for one that is wrong."""
    command = Command(action, value, lane, who(program), time.time(), uuid.uuid4().hex, to)
    check(command)
    return command


def who(program: str = "") -> str:
    """``user@host (program)`` of this process, for the pool's log."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    tail = f" ({program})" if program else ""
    return f"{user}@{socket.gethostname()}{tail}"


def check(command: Command) -> None:
    """Raises CommandError when ``command`` is not one a pool obeys."""
    if command.action not in ACTIONS:
        raise CommandError(f"unknown action {command.action[:40]!r} (one of {', '.join(ACTIONS)})")
    if command.action in ("scale", "workers") and command.value is None:
        raise CommandError(f"{command.action} needs a number")
    value = command.value
    if command.action == "workers" and value is not None and not 0 <= value <= MAX_WORKERS:
        raise CommandError(f"workers needs a count of 0 to at most {MAX_WORKERS}")
    if command.action == "scale" and value is not None and abs(value) > MAX_WORKERS:
        raise CommandError(f"scale needs a step of at most {MAX_WORKERS} either way")
    if command.lane and command.action not in ("pause", "resume"):
        raise CommandError(f"{command.action} takes no lane")


def reply_to(raw: bytes) -> str:
    """The id of a command that could not be read, where it can be found ('' if not):
    its sender is told why it was refused rather than left waiting."""
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        return ""
    found = document.get("id") if isinstance(document, dict) else None
    return found if isinstance(found, str) and COMMAND_ID.fullmatch(found) else ""


def parse(raw: bytes) -> Command:
    """The command ``raw`` holds; CommandError for anything else (anyone may write to the
    mailbox: a field of the wrong kind is refused, never trusted)."""
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise CommandError("a command that is not JSON") from error
    if not isinstance(document, dict):
        raise CommandError("a command that is not a JSON object")
    value = document.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise CommandError("a command whose value is not a whole number")
    texts = {name: document.get(name, "") for name in ("action", "lane", "by", "id", "to")}
    if not all(isinstance(text, str) for text in texts.values()):
        raise CommandError("a command whose fields are not text")
    if texts["id"] and not COMMAND_ID.fullmatch(texts["id"]):
        raise CommandError("a command whose id is not 1 to 64 letters, digits, '.', '_' or '-'")
    at = document.get("at", 0.0)
    if isinstance(at, bool) or not isinstance(at, int | float):
        raise CommandError("a command whose time is not a number")
    command = Command(
        action=texts["action"],
        value=value,
        lane=_printable(texts["lane"]),
        by=_printable(texts["by"]),
        at=float(at),
        id=texts["id"],
        to=_printable(texts["to"]),
    )
    check(command)
    return command


def expired(command: Command, now: float) -> bool:
    """Whether ``command`` was sent more than COMMAND_TTL seconds before ``now``: a pool
    that comes back later does not obey an old order (Redis keeps a mailbox as long as
    commands keep coming to it: its TTL is the last one's). A command without a time
    (written by hand) does not expire."""
    return command.at > 0 and now - command.at > COMMAND_TTL


def _printable(text: str) -> str:
    """``text`` cut to MAX_TEXT, its control characters (a forged line in the log) as
    ``?``."""
    return "".join(c if c.isprintable() else "?" for c in text[:MAX_TEXT])


@dataclass(frozen=True)
class Reply:
    pool: str
    ok: bool
    said: str
    """What the pool did, or why it refused."""
    at: float = 0.0

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def parse(cls, raw: bytes) -> Reply:
        """A reply as a pool wrote it; CommandError for anything else."""
        try:
            document = json.loads(raw)
            return cls(
                str(document["pool"]),
                bool(document["ok"]),
                str(document["said"]),
                float(document.get("at", 0.0)),
            )
        except (ValueError, RecursionError, KeyError, TypeError) as error:
            raise CommandError("a reply that is not one a pool writes") from error


@dataclass(frozen=True)
class NoReply:
    """No reply came to a command: ``withdrawn`` (never taken, nothing was done), or
    taken by the pool, which may have obeyed it."""

    withdrawn: bool
    waited: float
    command: Command

    def describe(self) -> str:
        if self.withdrawn:
            return (
                f"no reply within {self.waited:g} s: withdrawn unread, nothing was done (is "
                "the pool running? it reads its commands every second)"
            )
        return (
            f"no reply within {self.waited:g} s, but the pool took the command: it may have "
            f"been obeyed (its log says; command {self.command.id})"
        )


def send(queue: QueueAdmin, pool: str, command: Command, timeout: float) -> Reply | NoReply:
    """Sends ``command`` to ``pool`` and waits for its reply; with none within ``timeout``
    seconds, withdraws it or, taken meanwhile, waits :data:`REPLY_GRACE` more. Raises the
    store's errors (the command withdrawn if it can be: it may have been obeyed). Its
    ``at`` is stamped by the store's clock, which the pool judges its age by."""
    command = replace(command, at=queue.clock())
    body = command.encode()
    queue.send_command(pool, body)
    try:
        raw = queue.wait_reply(command.id, timeout)
    except StoreError:
        with contextlib.suppress(StoreError):
            queue.withdraw_command(pool, body)
        raise
    waited = timeout
    if raw is None:
        if queue.withdraw_command(pool, body):
            return NoReply(True, waited, command)
        raw = queue.wait_reply(command.id, REPLY_GRACE)
        waited += REPLY_GRACE
    return NoReply(False, waited, command) if raw is None else Reply.parse(raw)
