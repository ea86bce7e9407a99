"""The heartbeats in the store: what a worker and a pool publish, written and read here only.

A pool's hash (``keys.pool(name)``) carries a TTL: while it lives, the pool is alive, and
so is each worker it lists (``workers``). A worker's hash (``keys.heartbeat(id)``) is
written when its state changed, with ``keys.worker_alive(id)`` beside it for a
heartbeat's life (what says a worker is alive when no live pool lists it: at its start,
once its pool is gone). :class:`WorkerBeat` and :class:`PoolBeat` are
their one definition — the worker and the pool write ``fields()``, every view reads
``parse()`` — so that a field renamed on one side cannot be read stale on the other.

The store holds text: a tuple is written comma-separated, a flag as 0/1, a value not known
(``None``) is left out. Reading forgives what an older or newer tuitop wrote — and what
anyone who can write to the store wrote: a field missing, not a number, negative or out
of range reads as its default, so that no view fails on it.
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from tuitop.lanes import DEFAULT_LANE

FieldValue = str | int | float


@dataclass(frozen=True, kw_only=True)
class _Beat:
    """Common to both: how fields are written and read back."""

    host: str = ""
    pid: int = 0
    beat: float = 0.0
    """When it was written (epoch seconds, the writer's clock)."""

    def fields(self) -> dict[str, FieldValue]:
        """The hash's fields, as HSET takes them."""
        written: dict[str, FieldValue] = {}
        for name in _kinds(type(self)):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = int(value)
            written[name] = value
        return written

    @classmethod
    def parse(cls, fields: Mapping[bytes, bytes], **given: Any) -> Self:
        """Reads a hash as HGETALL returns it; ``given`` fills what the hash does not say
        (or says badly) instead of the class default."""
        values: dict[str, Any] = {}
        for name, kind in _kinds(cls).items():
            raw = fields.get(name.encode())
            if raw is None:
                continue
            value = _read(raw.decode(errors="replace"), kind)
            if value is not None:
                values[name] = value
        return cls(**{**given, **values})


_KINDS: dict[type, dict[str, type]] = {}


def _kinds(cls: type[_Beat]) -> dict[str, type]:
    """Each field's name and the kind of its value (``int | None`` is int)."""
    if cls in _KINDS:
        return _KINDS[cls]
    kinds: dict[str, type] = {}
    for name, hint in typing.get_type_hints(cls).items():
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if typing.get_origin(hint) is tuple:
            kinds[name] = tuple
        elif options:  # X | None
            kinds[name] = options[0]
        else:
            kinds[name] = hint
    _KINDS[cls] = kinds
    return kinds


INT_LIMIT = 2**53
"""No field of a heartbeat is negative or larger (a float can say every integer up to it)."""
FLOAT_LIMIT = 2.0**33
"""Times (epoch seconds: the year 2242) and CPU %: a value past it cannot be shown."""


def _read(text: str, kind: type) -> Any:
    if kind is tuple:
        return tuple(text.split(",")) if text else ()
    if kind is bool:
        return text not in ("", "0")
    if kind in (int, float):
        try:
            number = float(text)
        except ValueError:
            return None
        if not (
            math.isfinite(number) and 0 <= number <= (INT_LIMIT if kind is int else FLOAT_LIMIT)
        ):
            return None  # written by something else than a tuitop: the default instead
        return int(number) if kind is int else number
    return text


@dataclass(frozen=True, kw_only=True)
class WorkerBeat(_Beat):
    """A worker's heartbeat, written by its heartbeat thread when it changed (every
    second while busy)."""

    pool: str = ""
    slot: int = 0
    lane: str = DEFAULT_LANE
    serves: tuple[str, ...] = (DEFAULT_LANE,)
    """The lanes it takes from, its own first."""
    task_pid: int = 0
    """The task process it runs (0: none)."""
    state: str = "unknown"
    since: float = 0.0
    """When it entered ``state``."""
    job_started: float = 0.0
    topic: str = ""
    """The topic of the job it runs ('' when idle)."""
    done: int = 0
    failed: int = 0
    processed: int = 0
    max_messages: int = 0
    """It is replaced after this many messages."""
    cpu: float | None = None
    """% of a core, the worker and its children (a task and what it started)."""
    rss: int | None = None


@dataclass(frozen=True, kw_only=True)
class PoolBeat(_Beat):
    """A pool's heartbeat, written by its parent process when it changed, and at least
    three times in its TTL."""

    wanted: int = 0
    """The count the pool runs now: the session's (``+``/``-``) or the config's."""
    configured: int = 0
    """``$sys_nb_backend_workers`` as the files say."""
    running: int = 0
    files: tuple[str, ...] = ()
    log_level: str = ""
    async_scope: str = ""
    lanes: str = ""
    """Its ``$tuitop_lanes`` in force, canonical ('' for none)."""
    served: tuple[str, ...] = ()
    """The lanes (beyond the default one) its workers serve: another pool stopping leaves
    these where they are."""
    redis: str = ""
    loaded_at: float = 0.0
    config_error: str = ""
    stopping: bool = False
    """It is stopping warm: it serves no lane any more, its workers finish their jobs."""
    paused: bool = False
    """No worker of it takes messages (``tuitop ctl pause``)."""
    paused_lanes: tuple[str, ...] = ()
    """Lanes its workers do not take from (``tuitop ctl pause POOL LANE``)."""
    held: str = ""
    """Why none of its workers takes, besides a pause: Tuleap upgraded under it, until
    ``tuleap sanity-check`` passes ('' when nothing holds it)."""
    workers: tuple[str, ...] = ()
    """The ids of its workers alive now: while this hash lives, each of them is alive
    whether or not it wrote its own hash lately (an idle worker writes nothing)."""
    instance: str = ""
    """Which run of the pool this is (its name's claim): a command names it, and a pool
    started later under the same name refuses what was sent to this one."""


def json_fields(text: str | bytes | None) -> dict[bytes, bytes]:
    """A heartbeat kept as JSON (the database's rows) as the hash :meth:`_Beat.parse` reads;
    anything else than an object of plain values reads as none (anyone may write here)."""
    try:
        document = json.loads(text or "{}")
    except (ValueError, RecursionError):
        return {}
    if not isinstance(document, dict):
        return {}
    return {
        str(name).encode(): str(value).encode("utf-8", "replace")
        for name, value in document.items()
        if isinstance(value, str | int | float) and not isinstance(value, bool)
    }
