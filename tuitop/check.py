"""``tuitop check``: Tuleap's SYSTEM_CHECK for a monitoring system (Nagios, Icinga, a timer).

The monitoring-plugin convention: the exit code is the status (0 OK, 1 WARNING, 2 CRITICAL,
3 UNKNOWN); the first line is ``TUITOP <STATUS> - <what is worst> | <perfdata>``, the lines
after it one finding each. Several findings give the worst status, ranked CRITICAL, WARNING,
UNKNOWN, OK: a part that cannot be read (UNKNOWN) never hides a known problem, and shows
when nothing else is wrong.

What it looks at, from one snapshot of the queue (the one every view reads) and, on Redis,
the server's own settings:

- the oldest waiting message of each lane, the true oldest (Tuleap's check reads the
  newest): past ``--warning`` (120 s, Tuleap's limit; or the lane's own latency target,
  ``latency_15m``) WARNING with Tuleap's sentence, past ``--critical`` CRITICAL;
- messages waiting and no live pool, no live worker, or no worker taking from their lane:
  CRITICAL (WARNING when a ``tuitop ctl pause`` is why); no pool at all, or a pool short
  of the workers it wants: WARNING;
- a live pool keeping its last good config because a save was refused: WARNING;
- dead letters made in the last 15 minutes (the stats' memory): WARNING;
- on the database queue, the server's ``max_connections`` (and the account's
  ``max_user_connections``) leaving less room than the pools still want (a worker each
  and one a pool; a pool not running yet: the config's count and one) plus a margin for
  Tuleap's front ends (a tenth of the limit, at least 10): WARNING;
- Redis older than 6.2 (tuitop needs LMOVE): CRITICAL; the seed's two demands, a password
  of at least 30 characters (the one tuitop sends; and a Redis that answers without one)
  and ``appendonly yes``: WARNING; those settings unreadable (INFO and CONFIG GET refused):
  UNKNOWN for that part, saying why.

No password is ever printed: errors go through the store's ``describe``, which masks it.
"""

from __future__ import annotations

import contextlib
import enum
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuitop.backends import open_view
from tuitop.backends.errors import StoreError
from tuitop.backends.redis import probe
from tuitop.config import DB_QUEUE, RedisSettings, Settings
from tuitop.lanes import DEFAULT_LANE, TULEAP_QUEUE, latency_target
from tuitop.outcome import Outcome
from tuitop.snapshot import Snapshot
from tuitop.stats import STATS_KEEP_SECONDS

if TYPE_CHECKING:
    from tuitop.backends.db.view import ConnectionRoom

OLDEST_WARNING = 120.0
"""Tuleap's SYSTEM_CHECK warns past this age of the oldest waiting message."""
OLDEST_CRITICAL = 900.0
"""Tuleap's task time limit: a message that waited this long waited a whole job's life."""
PASSWORD_MIN_LENGTH = 30
"""The seed: "a password of at least 30 characters"."""
REDIS_MIN_VERSION = (6, 2)
"""LMOVE and BLMOVE, which every take uses, came with Redis 6.2."""
TULEAP_SENTENCE = (
    "There are {count} async events waiting to be processed, you should check if Tuleap "
    "Workers are running."
)
"""Tuleap's SYSTEM_CHECK says this (src/common/Queue/), kept word for word for the admins
who grep for it."""


class Status(enum.IntEnum):
    """A plugin's exit codes."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def rank(self) -> int:
        """How bad: CRITICAL > WARNING > UNKNOWN > OK."""
        return {Status.OK: 0, Status.UNKNOWN: 1, Status.WARNING: 2, Status.CRITICAL: 3}[self]


@dataclass(frozen=True)
class Finding:
    status: Status
    part: str
    """What was looked at: queue, workers, config, dead-letters, redis, store."""
    text: str


@dataclass(frozen=True)
class Perf:
    """One perfdata value: ``label=value[unit];warn;crit;min``."""

    label: str
    value: float
    unit: str = ""
    warning: float | None = None
    critical: float | None = None

    def render(self) -> str:
        def number(value: float | None) -> str:
            if value is None:
                return ""
            return f"{value:.3f}".rstrip("0").rstrip(".") if value % 1 else str(int(value))

        label = f"'{self.label}'" if any(c in self.label for c in " ='") else self.label
        tail = f"{number(self.warning)};{number(self.critical)};0"
        return f"{label}={number(self.value)}{self.unit};{tail}"


@dataclass(frozen=True)
class Limits:
    """Ages of the oldest waiting message, in seconds."""

    warning: float = OLDEST_WARNING
    critical: float = OLDEST_CRITICAL
    redis_settings: bool = True
    """Look at the Redis server's version, persistence and password."""

    def lane_warning(self, lane: str) -> float:
        """Tuleap's queue (the default lane) warns past ``warning``, as Tuleap's check; a
        lane named after its target past that target."""
        target = None if lane == DEFAULT_LANE else latency_target(lane)
        return min(target, self.critical) if target is not None else self.warning


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    perfdata: list[Perf] = field(default_factory=list)

    @property
    def status(self) -> Status:
        return max((f.status for f in self.findings), key=lambda s: s.rank, default=Status.OK)

    def add(self, status: Status, part: str, text: str) -> None:
        self.findings.append(Finding(status, part, text))

    def summary(self) -> str:
        """The findings of the worst status, in one line."""
        worst = self.status
        return "; ".join(f.text for f in self.findings if f.status == worst) or "nothing to say"

    def render(self) -> str:
        """The plugin's output: the status line (with the perfdata), then each finding,
        the worst first."""
        line = f"TUITOP {self.status.name} - {self.summary()}"
        if self.perfdata:
            line += " | " + " ".join(perf.render() for perf in self.perfdata)
        ordered = sorted(self.findings, key=lambda f: -f.status.rank)
        return "\n".join([line, *(f"{f.status.name}: {f.text}" for f in ordered)])

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status.name,
            "code": int(self.status),
            "summary": self.summary(),
            "findings": [
                {"status": f.status.name, "part": f.part, "text": f.text} for f in self.findings
            ],
            "perfdata": {
                perf.label: {
                    "value": perf.value,
                    "unit": perf.unit,
                    "warning": perf.warning,
                    "critical": perf.critical,
                }
                for perf in self.perfdata
            },
        }


def run_check(settings: Settings, limits: Limits) -> Report:
    """Looks at the queue ``settings`` name; never raises for a server that does not
    answer (that is a CRITICAL finding)."""
    report = Report()
    store = settings.store
    if not store.configured:
        report.add(
            Status.UNKNOWN,
            "store",
            "Redis is not configured ($redis_server is empty), nor is a database: nothing to check",
        )
        return report
    where = store.noun
    try:
        view = open_view(store, settings.lanes, "tuitop:check")
    except StoreError as error:
        report.add(Status.CRITICAL, "store", str(error))
        return report
    room: ConnectionRoom | None = None
    try:
        snapshot = view.snapshot(time.time())
        recent_dead = view.stats(snapshot.taken_at, STATS_KEEP_SECONDS).counts.get(Outcome.DEAD, 0)
        if settings.queue == DB_QUEUE:
            from tuitop.backends.db.view import DbView  # the backend only when used

            assert isinstance(view, DbView)
            room = view.connection_room()
    except StoreError as error:
        report.add(Status.CRITICAL, "store", f"{where}: {error!s}")
        return report
    finally:
        view.close()
    assess_snapshot(report, snapshot, recent_dead, limits)
    if room is not None:
        assess_connections(report, room, snapshot, settings.backend_workers)
    if settings.queue != DB_QUEUE and limits.redis_settings:
        assess_redis(report, settings.redis)
    return report


def assess_snapshot(report: Report, snapshot: Snapshot, recent_dead: int, limits: Limits) -> None:
    """The queue, the pools and workers, their config and the dead letters."""
    _assess_lanes(report, snapshot, limits)
    _assess_pools(report, snapshot)
    queue = snapshot.queue
    minutes = STATS_KEEP_SECONDS // 60
    if recent_dead:
        report.add(
            Status.WARNING,
            "dead-letters",
            f"{recent_dead} message(s) dead-lettered in the last {minutes} min "
            f"({queue.dead_letters} kept): 'tuitop dead-letters list' says why",
        )
    elif queue.dead_letters:
        report.add(
            Status.OK,
            "dead-letters",
            f"{queue.dead_letters} dead letter(s) kept, none in the last {minutes} min",
        )
    live = [w for w in snapshot.workers if w.state != "dead"]
    report.perfdata.extend(
        [
            Perf("waiting", queue.waiting),
            Perf("oldest", round(queue.oldest_age or 0.0, 3), "s", limits.warning, limits.critical),
            Perf("processing", queue.processing),
            Perf("delayed", queue.delayed),
            Perf("dead_letters", queue.dead_letters),
            Perf("dead_letters_recent", recent_dead),
            Perf("pools", sum(1 for pool in snapshot.pools if not pool.stopping)),
            Perf("workers", len(live)),
            Perf("workers_wanted", sum(p.wanted for p in snapshot.pools if not p.stopping)),
            Perf("done_last_minute", snapshot.last_minute.counts.get(Outcome.DONE, 0)),
        ]
    )
    for lane in snapshot.lanes:
        if lane.name != DEFAULT_LANE:
            report.perfdata.append(
                Perf(
                    f"oldest_{lane.name}",
                    round(lane.oldest_age or 0.0, 3),
                    "s",
                    limits.lane_warning(lane.name),
                    limits.critical,
                )
            )


def _assess_lanes(report: Report, snapshot: Snapshot, limits: Limits) -> None:
    queue = snapshot.queue
    count = f"{queue.waiting:,}{'+' if queue.waiting_capped else ''}"
    late = False
    for lane in snapshot.lanes:
        age = lane.oldest_age
        if age is None:
            continue
        warning = limits.lane_warning(lane.name)
        if age <= warning:
            continue
        late = True
        status = Status.CRITICAL if age > limits.critical else Status.WARNING
        if lane.name == DEFAULT_LANE:
            text = TULEAP_SENTENCE.format(count=count)
            text += f" The oldest in {TULEAP_QUEUE} waits since {_duration(age)}."
        else:
            text = (
                f"Lane {lane.name}: {lane.waiting:,} message(s) waiting, the oldest since "
                f"{_duration(age)} (more than {_duration(warning)})."
            )
        report.add(status, "queue", text)
    if not late:
        oldest = f", the oldest since {_duration(queue.oldest_age)}" if queue.oldest_age else ""
        report.add(Status.OK, "queue", f"{count} message(s) waiting{oldest}")


def _assess_pools(report: Report, snapshot: Snapshot) -> None:
    pools = [pool for pool in snapshot.pools if not pool.stopping]
    live = [worker for worker in snapshot.workers if worker.state != "dead"]
    waiting = snapshot.queue.waiting
    if not pools:
        stopping = len(snapshot.pools)
        because = f" ({stopping} stopping)" if stopping else ""
        if waiting:
            report.add(
                Status.CRITICAL,
                "workers",
                f"{waiting:,} message(s) wait and no tuitop pool runs{because}",
            )
        else:
            report.add(Status.WARNING, "workers", f"no tuitop pool runs{because}")
    elif not live and waiting:
        # Paused by an operator ('tuitop ctl pause'): known, said; its age still escalates.
        report.add(
            Status.WARNING if all(p.paused or p.held for p in pools) else Status.CRITICAL,
            "workers",
            f"{waiting:,} message(s) wait and no worker runs ("
            + ", ".join(
                f"{p.name} wants {p.wanted}{', paused' * p.paused}"
                + (f", held: {p.held}" if p.held else "")
                for p in pools
            )
            + ")",
        )
    else:
        for lane in snapshot.lanes:
            if lane.waiting and live and not lane.workers + lane.helpers:
                pausing = [
                    p.name for p in pools if p.paused or p.held or lane.name in p.paused_lanes
                ]
                if pausing:
                    report.add(
                        Status.WARNING,
                        "workers",
                        f"lane {lane.name}: {lane.waiting:,} message(s) wait, paused "
                        f"({', '.join(pausing)})",
                    )
                    continue
                report.add(
                    Status.CRITICAL,
                    "workers",
                    f"lane {lane.name}: {lane.waiting:,} message(s) wait and no worker "
                    "takes from it",
                )
        for pool in pools:
            if pool.held:
                report.add(Status.WARNING, "workers", f"pool {pool.name}: {pool.held}")
            if pool.paused or pool.paused_lanes:
                what = (
                    "is paused" if pool.paused else f"pauses lane(s) {', '.join(pool.paused_lanes)}"
                )
                report.add(
                    Status.WARNING,
                    "workers",
                    f"pool {pool.name} {what} ('tuitop ctl resume --pool {pool.name}')",
                )
        short = [p for p in pools if p.running < p.wanted and not p.paused and not p.held]
        for pool in short:
            report.add(
                Status.WARNING,
                "workers",
                f"pool {pool.name} runs {pool.running} of the {pool.wanted} worker(s) it "
                "wants (its log says why)",
            )
        if not short:
            report.add(
                Status.OK,
                "workers",
                f"{len(pools)} pool(s), {len(live)} worker(s) live: "
                + ", ".join(f"{p.name} {p.running}/{p.wanted}" for p in pools),
            )
    for pool in pools:
        if pool.config_error:
            report.add(
                Status.WARNING,
                "config",
                f"pool {pool.name} keeps its last good config, a save was refused: "
                f"{pool.config_error}",
            )


CONNECTION_MARGIN = 0.1
"""The share of a database's connection limit kept free for Tuleap's front ends."""
CONNECTION_MARGIN_MIN = 10


def assess_connections(
    report: Report, room: ConnectionRoom, snapshot: Snapshot, configured: int
) -> None:
    """Whether the database has room for what the pools still want, and a margin."""
    pools = [pool for pool in snapshot.pools if not pool.stopping]
    if pools:
        wanted = sum(max(pool.wanted - pool.running, 0) for pool in pools)
        why = "the workers the pools still want"
    else:
        wanted = configured + 1
        why = f"a pool of {configured} worker(s) starting"
    limits = [("max_connections", room.allowed, room.in_use)]
    if room.account_allowed:
        limits.append(("max_user_connections", room.account_allowed, room.account_in_use))
    tight = False
    for name, allowed, in_use in limits:
        margin = max(math.ceil(allowed * CONNECTION_MARGIN), CONNECTION_MARGIN_MIN)
        free = allowed - in_use
        if free < wanted + margin:
            tight = True
            report.add(
                Status.WARNING,
                "connections",
                f"the database's {name} ({allowed}) leaves room for {max(free, 0)} more "
                f"connection(s) ({in_use} in use): {why} take {wanted} (one a worker, one a "
                f"pool) and Tuleap's front ends need a margin of {margin}; raise {name} or "
                "lower $sys_nb_backend_workers",
            )
    if not tight:
        report.add(
            Status.OK,
            "connections",
            f"{room.in_use} of the database's {room.allowed} connections in use",
        )


def assess_redis(report: Report, settings: RedisSettings, timeout: float = 5.0) -> None:
    """The seed's demands of the Redis server, and the version tuitop needs."""
    password = settings.password.reveal().strip()
    if not password:
        report.add(
            Status.WARNING,
            "redis",
            "tuitop sends Redis no password ($redis_password is empty): the seed asks "
            f"for one of at least {PASSWORD_MIN_LENGTH} characters",
        )
    elif len(password) < PASSWORD_MIN_LENGTH:
        report.add(
            Status.WARNING,
            "redis",
            f"the Redis password is shorter than the {PASSWORD_MIN_LENGTH} characters the "
            "seed asks for",
        )
    else:
        _assess_door(report, probe.door(settings, timeout))
    _assess_server(report, probe.server_facts(settings, timeout))


def _assess_door(report: Report, door: probe.Door) -> None:
    if door.closed:
        report.add(Status.OK, "redis", "Redis refuses clients without the password")
    elif door.closed is None:
        report.add(Status.UNKNOWN, "redis", f"could not tell whether Redis asks for a "
                   f"password: {door.why}")  # fmt: skip
    else:
        report.add(
            Status.WARNING,
            "redis",
            "Redis answers clients that send no password (requirepass is not set): anyone "
            "who reaches its port can read and change the queue",
        )


def _assess_server(report: Report, facts: probe.ServerFacts) -> None:
    if facts.unreachable:
        report.add(Status.CRITICAL, "store", facts.unreachable)
        return
    if facts.refused:
        report.add(
            Status.UNKNOWN,
            "redis",
            "cannot read Redis's version and persistence (INFO and CONFIG GET refused: "
            f"{facts.refused}); --no-redis-settings skips this",
        )
        return
    version_text, appendonly = facts.version, facts.appendonly
    version = _version(version_text)
    if version is not None and version < REDIS_MIN_VERSION:
        report.add(
            Status.CRITICAL,
            "redis",
            f"Redis {version_text} is older than 6.2: tuitop's takes (LMOVE, BLMOVE) fail",
        )
    if appendonly is None:
        report.add(
            Status.UNKNOWN,
            "redis",
            "cannot read whether Redis keeps an append-only file (INFO and CONFIG GET refused)",
        )
    elif not appendonly:
        report.add(
            Status.WARNING,
            "redis",
            "Redis runs without appendonly: a restart loses every message since its last "
            "snapshot (the seed asks for appendonly yes)",
        )
    else:
        report.add(Status.OK, "redis", f"Redis {version_text or '?'} keeps an append-only file")


def _version(text: str) -> tuple[int, ...] | None:
    parts = text.split(".")
    if len(parts) < 2 or not all(part.isdigit() for part in parts[:2]):
        return None
    return tuple(int(part) for part in parts[:2])


def _duration(value: float | None) -> str:
    """``45 s``, ``3 min 12 s``, ``2 h 5 min``: how long, to an operator reading a page."""
    if value is None or not math.isfinite(value):
        return "?"
    whole = int(value)
    if whole < 120:
        return f"{value:.0f} s"
    if whole < 7200:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


class CheckTimeout(BaseException):
    """The check's time is up. A BaseException: the clients' ``except Exception`` (and
    their turning a TimeoutError into their own) must not swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raises CheckTimeout in the main thread after ``seconds`` (a plugin answers within
    its ``-t`` whatever a server does, as ``check_*`` plugins do with alarm())."""

    def expire(signum: int, frame: object) -> None:
        raise CheckTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
