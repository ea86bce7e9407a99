"""The pool's decisions, as pure functions: no process, no store, no clock of their own.

What the arbiter asks before it acts — how many workers to stop and start and which, how
long to wait before the next try, what a new configuration changes — is answered here
from plain values, so that each answer is tested without starting anything.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass, field

from tuitop.config import Settings, StoreSettings
from tuitop.lanes import Staffing


@dataclass(frozen=True)
class Seat:
    """One running worker, as the scaling decision sees it."""

    lane: str
    serves: tuple[str, ...]
    idle: bool = True
    """It holds no job: stopping it loses no time."""


@dataclass(frozen=True)
class ScalePlan:
    """What to do now to reach the wanted count: stop these slots (why), start these
    lanes' workers (one each), and the slots left to replace later."""

    stop: list[tuple[int, str]] = field(default_factory=list)
    start: list[str] = field(default_factory=list)
    outdated: dict[int, str] = field(default_factory=dict)


def plan_scale(
    staffing: Staffing,
    seats: Mapping[int, Seat],
    outdated: Mapping[int, str],
    *,
    replacing: bool,
    can_start: bool,
    fewer_because: str = "the pool is scaled down",
) -> ScalePlan:
    """How to bring the running workers (``seats``, stopping ones left out) to
    ``staffing``: ``outdated`` are the slots due for replacement (and why), ``replacing``
    says a replacement is already under way (a worker stopping after its job),
    ``can_start`` that a worker may start now (the store answers, no boot back-off);
    ``fewer_because``: why workers beyond ``staffing`` stop (the log says it).

    Too many: those due for replacement stop first, then those of lanes over their share,
    then the highest slots. Outdated ones are replaced while a replacement can start
    (else capacity would drop for nothing): idle ones at once (they hold no job, and an
    outdated worker may move messages to a lane no longer served), busy ones rolling, one
    at a time, each after its job. Then what is missing starts, the lanes short the most
    first."""
    wanted = staffing.total
    due = dict(outdated)
    for slot in staffing.misfits({s: (seat.lane, seat.serves) for s, seat in seats.items()}):
        due.setdefault(slot, "its lane changed")
    surplus = staffing.surplus_first({slot: seat.lane for slot, seat in seats.items()})
    by_preference = sorted(surplus, key=lambda slot: slot not in due)
    extra = max(len(seats) - wanted, 0)
    stop = [(slot, fewer_because) for slot in by_preference[:extra]]
    running = {slot: seat for slot, seat in seats.items() if slot not in dict(stop)}
    due = {slot: why for slot, why in due.items() if slot in running}
    if due and len(running) >= wanted and can_start:
        idle = [slot for slot in due if running[slot].idle]
        if not idle and not (replacing or stop):
            idle = [next(iter(due))]
        for slot in idle:
            stop.append((slot, due.pop(slot)))
            del running[slot]
    missing = wanted - min(len(running), wanted)
    start: list[str] = []
    if missing > 0 and can_start:
        start = staffing.to_start((seat.lane for seat in running.values()), missing)
    return ScalePlan(stop=stop, start=start, outdated=due)


def free_slots(taken: set[int], count: int) -> list[int]:
    """The ``count`` lowest slot numbers not ``taken``."""
    slots: list[int] = []
    slot = 0
    while len(slots) < count:
        if slot not in taken:
            slots.append(slot)
        slot += 1
    return slots


@dataclass(frozen=True)
class ConfigChange:
    """What a new configuration changes, as the arbiter applies it."""

    said: list[str]
    """One line each, for the log (at warning level: an admin who saved wants to see it)."""
    leave_store: bool = False
    """The pool leaves the store in force (another server, new credentials, or the other
    kind of queue)."""
    replace_workers: bool = False
    """Every running worker is to be replaced, one by one, each after its job."""
    changed: bool = False
    """Anything differs (a save that changed nothing, a touch, is no new version)."""


def config_change(old: Settings, new: Settings) -> ConfigChange:
    """What applying ``new`` over ``old`` does."""
    said: list[str] = []
    leave = False
    before, after = old.store, new.store
    name = after.noun
    if after != before and not before.configured:
        said.append(f"{name} at {after.address}")
    elif after != before and same_server(after, before):
        said.append(
            f"{name} {after.address}: new credentials; the workers reconnect one by one "
            "after their current job"
        )
        leave = True
    elif after != before:
        what = name if after.kind == before.kind else "queue"
        said.append(
            f"{what} {before.address} → {after.address}: the pool moves now, its "
            "workers one by one after their current job"
        )
        leave = True
    if old.log_level != new.log_level:
        said.append(f"log level {old.log_level} → {new.log_level}")
    if old.backend_workers != new.backend_workers:
        said.append(f"workers {old.backend_workers} → {new.backend_workers}")
    if old.async_scope != new.async_scope:
        said.append(f"async scope {old.async_scope} → {new.async_scope}")
    if old.lanes != new.lanes:
        said.append(f"lanes {old.lanes} → {new.lanes}")
    if old.timeout_retries != new.timeout_retries:
        said.append(f"retried past the time limit: {old.timeout_retries} → {new.timeout_retries}")
    if old.mail != new.mail:
        said.append("mail settings changed: workers are replaced one by one")
    # What a running worker took at its start (the log level is shared live; the pool
    # keeps the store's address).
    replace = (old.mail, old.lanes, old.timeout_retries) != (
        new.mail,
        new.lanes,
        new.timeout_retries,
    ) or after != before
    return ConfigChange(said=said, leave_store=leave, replace_workers=replace, changed=old != new)


def same_server(a: StoreSettings, b: StoreSettings) -> bool:
    """The same server (the credentials aside): the same Redis, or the same database."""
    return (a.kind, a.host, a.port, a.tls, getattr(a, "name", "")) == (
        b.kind,
        b.host,
        b.port,
        b.tls,
        getattr(b, "name", ""),
    )


def describe_exit(code: int | None, detached: bool) -> str:
    """How a worker ended, for the log (``exited with code 3``, ``was killed by SIGKILL``)."""
    if detached:
        return "ended (its exit code was lost with the forkserver)"
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:  # a real-time signal has no name
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
