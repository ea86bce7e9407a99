"""Lanes: topics grouped by the latency they need, each with workers of its own.

Tuleap has one list and every worker takes from it: with two workers, two JIRA imports stall
every notification for minutes. A lane is a set of topics, named (as GoodJob advises) by the
latency its jobs need, with a number of the pool's workers reserved for it — Sidekiq's and
GoodJob's queue pools, kept on Tuleap's wire format:

* the **default lane** (:data:`DEFAULT_LANE`) takes every topic no other lane names; its
  list is Tuleap's own ``app_user_events``, where front ends still LPUSH everything;
* every other lane has a list of its own; a worker that takes from ``app_user_events`` a
  message of a lane it does not serve moves it to that lane's list, in the same atomic
  script (:mod:`tuitop.backends.redis.queue`), so a message is always in exactly one list;
* a lane's workers take from their lane first, then help the default lane when their own is
  empty; every worker waits on ``app_user_events``, where every message arrives, so that an
  idle worker of any lane takes a notification at once (capacity is never idle while
  notifications wait); the default lane's workers never take another lane's messages, so
  long jobs can never take over the whole pool;
* a lane the pool has too few workers to staff (one worker in all, say) is served by the
  default lane's workers after their own, so nothing ever waits for a worker that does not
  exist; a lane no live pool serves any more is moved back to ``app_user_events``.

``$tuitop_lanes`` spells the lanes (see :meth:`LaneSet.parse`); unset, tuitop's default for a
Tuleap forge puts its long topics (:data:`LONG_TOPICS`) on ``latency_15m`` with one worker.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

DEFAULT_LANE = "latency_10s"
TULEAP_QUEUE = "app_user_events"
"""Tuleap's queue (wire format): the Redis list its front ends push into, the
``queue_name`` of its database's rows; the default lane's messages wait there."""
LANE_PREFIX = f"{TULEAP_QUEUE}-lane-"


def lane_queue(lane: str) -> str:
    """The queue a lane's messages wait in: Tuleap's own for the default lane (front ends
    push everything there), ``app_user_events-lane-<name>`` for the others (a Redis list,
    the ``queue_name`` of the database's rows)."""
    return TULEAP_QUEUE if lane == DEFAULT_LANE else f"{LANE_PREFIX}{lane}"


def lane_of_queue(queue_name: str) -> str | None:
    """The lane whose messages wait in ``queue_name`` (None: not a lane's)."""
    if queue_name == TULEAP_QUEUE:
        return DEFAULT_LANE
    if queue_name.startswith(LANE_PREFIX) and len(queue_name) > len(LANE_PREFIX):
        return queue_name[len(LANE_PREFIX) :]
    return None


"""The lane of every topic no other lane names: Tuleap's ``app_user_events``."""
LONG_LANE = "latency_15m"
LONG_TOPICS = (
    "tuleap.tracker.creation.jira",
    "tuleap.project.create-from-archive",
    "tuleap.mediawiki-standalone.*",
    "tuleap.fts-meilisearch.process-pending-items-to-index",
    "tuleap.program_management.team.synchronize",
    "tuleap.git.repository-fork",
)
"""Tuleap's topics (at 17.4) that may run for minutes: a JIRA import, a project made from an
archive, MediaWiki instances, migrations and farm updates, a Meilisearch indexing batch, a
program's team synchronisation, a repository fork. Tuleap marks none as long; every other
topic — notifications, the git hooks, ``tuleap.git.repository-change`` and
``tuleap.git.gitolite-project-configuration`` — is on the default lane."""
DEFAULT_SPEC = f"{LONG_LANE}(1): {', '.join(LONG_TOPICS)}"
"""``$tuitop_lanes`` when unset."""

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,39}")
_PATTERN = re.compile(r"[A-Za-z0-9_.:*?-]+")
_LANE = re.compile(
    r"\s*(?P<name>[^\s(:]+)\s*(?:\(\s*(?P<workers>[^)]*?)\s*\))?\s*:(?P<topics>.*)", re.DOTALL
)
_LUA_MAGIC = re.compile(r"([\^$()%.\[\]+\-])")


def is_lane_name(name: str) -> bool:
    """Whether ``name`` can be a lane other than the default one (as ``$tuitop_lanes``
    names them): what a record written by something else must be to be moved."""
    return name != DEFAULT_LANE and _NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class Lane:
    """A lane other than the default one: its topics and the workers it reserves."""

    name: str
    topics: tuple[str, ...]
    """Topic names or globs (``*`` any characters, ``?`` one), matched in order."""
    workers: int
    """Workers reserved, or a percentage of the pool's when ``percent``."""
    percent: bool = False

    def reserved(self, total: int) -> int:
        """Workers it asks for in a pool of ``total`` (a percentage: at least 1 of 2+)."""
        if not self.percent:
            return self.workers
        share = total * self.workers // 100
        return max(share, 1) if self.workers and total >= 2 else share

    def describe(self) -> str:
        if self.name == DEFAULT_LANE:
            return f"{self.name}: {', '.join(self.topics)}"
        count = f"{self.workers}%" if self.percent else str(self.workers)
        return f"{self.name}({count}): {', '.join(self.topics)}"


@dataclass(frozen=True)
class LaneSet:
    """The lanes in force; with none, tuitop is Tuleap: one list, every worker on it.

    Lanes are for what may wait *longer* than the default lane: their workers help the
    default lane when their own is empty, and the default lane's never take theirs. To keep
    some topics fast while everything else may wait, give those to the default lane itself
    (``latency_10s: tuleap.tracker.artifact; latency_5m(1): *``)."""

    lanes: tuple[Lane, ...] = ()
    """As written, in order (a topic belongs to the first that names it); the default lane
    among them when it names topics of its own."""

    @property
    def reserved(self) -> tuple[Lane, ...]:
        """The lanes other than the default one: those with workers of their own."""
        return tuple(lane for lane in self.lanes if lane.name != DEFAULT_LANE)

    @classmethod
    def parse(cls, spec: str) -> LaneSet:
        """Reads ``NAME(WORKERS): TOPIC, TOPIC ...; NAME(WORKERS): ...``.

        WORKERS is a count or a percentage of the pool's workers (``25%``); without
        ``(…)`` a lane reserves 1. Topics are separated by commas or spaces and may use
        ``*`` and ``?``. A topic named by two lanes belongs to the first. The default lane,
        ``latency_10s``, may be written too, without workers (it has those the others do
        not reserve), to take topics before a later lane's pattern would. A lane named
        after a latency target shorter than the default lane's is refused: lanes are for
        what may wait longer. Raises ValueError saying what is wrong and where.
        """
        lanes: list[Lane] = []
        for index, part in enumerate(spec.split(";"), start=1):
            if not part.strip():
                continue
            # What is wrong is said by place, never by quoting the text: a config file's
            # strings may hold secrets, and no error shows one (the reader's rule).
            match = _LANE.fullmatch(part)
            if match is None:
                raise ValueError(f"lane {index}: expected NAME(WORKERS): TOPIC, TOPIC...")
            name = match.group("name")
            if not _NAME.fullmatch(name):
                raise ValueError(
                    f"lane {index}: its name is not a lane name (lower-case letters, digits, "
                    "'_', '.', '-'; at most 40)"
                )
            if name == DEFAULT_LANE and match.group("workers") is not None:
                raise ValueError(
                    f"lane {index}: {DEFAULT_LANE} is the default lane: it has the workers "
                    "the other lanes do not reserve, written without (WORKERS)"
                )
            target = latency_target(name)
            if target is not None and target < DEFAULT_TARGET:
                raise ValueError(
                    f"lane {index}: {name} would wait less than the default lane "
                    f"({DEFAULT_LANE}); lanes are for what may wait longer, and their workers "
                    f"help the default lane: give these topics to {DEFAULT_LANE} instead "
                    f"({DEFAULT_LANE}: TOPIC, ...)"
                )
            if any(lane.name == name for lane in lanes):
                raise ValueError(f"lane {index}: {name} is named twice")
            workers, percent = _workers(match.group("workers"), name)
            if name == DEFAULT_LANE:
                workers, percent = 0, False
            topics = tuple(t for t in re.split(r"[\s,]+", match.group("topics")) if t)
            if not topics:
                raise ValueError(f"lane {name}: no topic")
            for position, topic in enumerate(topics, start=1):
                if not _PATTERN.fullmatch(topic):
                    raise ValueError(
                        f"lane {name}: topic {position} is not a topic (letters, digits, '_', "
                        "'.', ':', '-', and the wildcards '*' and '?')"
                    )
            lanes.append(Lane(name, topics, workers, percent))
        return cls(tuple(lanes))

    @property
    def names(self) -> tuple[str, ...]:
        """Every lane, the default one first."""
        return (DEFAULT_LANE, *(lane.name for lane in self.reserved))

    def describe(self) -> str:
        """The spec in its canonical form ('' for none)."""
        return "; ".join(lane.describe() for lane in self.lanes)

    def __str__(self) -> str:
        return self.describe() or "none"

    def lane_of(self, topic: str) -> str:
        """The lane a topic belongs to: the first that names it, else the default one.
        Matched on its UTF-8 bytes, as the take script matches it in Redis."""
        data = topic.encode("utf-8", "surrogateescape")
        for lane in self.lanes:
            if any(_glob(pattern).fullmatch(data) for pattern in lane.topics):
                return lane.name
        return DEFAULT_LANE

    @property
    def catch_all(self) -> str:
        """The lane of the topics no lane names: the first written with ``*``, else the
        default lane."""
        return next((lane.name for lane in self.lanes if "*" in lane.topics), DEFAULT_LANE)

    def never_matched(self) -> list[str]:
        """Topics written where an earlier one always takes them first (the same topic
        earlier, or after ``*``): what is written there never happens."""
        seen: set[str] = set()
        found = []
        for lane in self.lanes:
            for position, topic in enumerate(lane.topics, start=1):
                if "*" in seen or topic in seen:
                    found.append(f"lane {lane.name}: topic {position} is never matched: an "
                                 "earlier one takes every such topic first")  # fmt: skip
                seen.add(topic)
        return found

    def plan(self, total: int) -> tuple[str, ...]:
        """The home lane of each of ``total`` worker slots: the lanes' reserved workers on
        the lowest slots, in their order, the default lane on the rest — and always at
        least one slot (reservations are cut, later lanes first, to leave it)."""
        homes: list[str] = []
        for lane in self.reserved:
            left = total - 1 - len(homes)
            homes.extend([lane.name] * max(min(lane.reserved(total), left), 0))
        return tuple(homes + [DEFAULT_LANE] * (total - len(homes)))

    def serves(self, home: str, plan: tuple[str, ...]) -> tuple[str, ...]:
        """The lanes a worker whose home is ``home`` takes from, in order: its own, then
        the default lane, then the lanes ``plan`` gives no worker of their own."""
        unstaffed = tuple(name for name in self.names[1:] if name not in plan)
        order = [home, DEFAULT_LANE, *unstaffed]
        return tuple(dict.fromkeys(order))

    def routes(self) -> tuple[tuple[str, str], ...]:
        """(Lua pattern, lane) for each topic pattern, in order: how the take script finds
        a message's lane (tuitop.backends.redis.queue)."""
        return tuple(
            (_lua_pattern(pattern), lane.name) for lane in self.lanes for pattern in lane.topics
        )


@dataclass(frozen=True)
class TopicChoice:
    """Some topics, named by lane or by topic (``$tuitop_timeout_retries``: the jobs
    retried when they ran past the time limit). Each name is a lane's (every topic of
    that lane) or a topic, ``*`` and ``?`` as in ``$tuitop_lanes``."""

    names: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> TopicChoice:
        """Names separated by commas or spaces; raises ValueError for one that is no
        topic or lane name."""
        names = tuple(name for name in re.split(r"[\s,]+", text) if name)
        for position, name in enumerate(names, start=1):
            if not _PATTERN.fullmatch(name):
                raise ValueError(
                    f"name {position} is not a topic or a lane (letters, digits, . _ - : "
                    "and the wildcards * ?)"
                )
        return cls(names)

    def covers(self, topic: str, lanes: LaneSet) -> bool:
        """Whether ``topic``, on ``lanes``, is chosen: by its name, or its lane's."""
        if not self.names:
            return False
        data = topic.encode("utf-8", "surrogateescape")
        lane = lanes.lane_of(topic)
        return any(name == lane or _glob(name).fullmatch(data) for name in self.names)

    def __str__(self) -> str:
        return ", ".join(self.names) or "none"


_TARGET = re.compile(r"latency_(\d+)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
DEFAULT_TARGET = 10.0
"""The default lane's latency target, as its name says."""


def latency_target(lane: str) -> float | None:
    """The wait a lane named after its latency target promises (``latency_15m``: 900 s),
    or None for a name that says none."""
    match = _TARGET.fullmatch(lane)
    if match is None:
        return None
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _workers(text: str | None, name: str) -> tuple[int, bool]:
    if text is None:
        return 1, False
    percent = text.endswith("%")
    digits = text[:-1].strip() if percent else text
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"lane {name}: its workers are not a number (e.g. 2 or 25%)")
    value = int(digits)
    if percent and value > 100:
        raise ValueError(f"lane {name}: {value}% of the workers is more than all of them")
    return value, percent


@functools.cache
def _glob(pattern: str) -> re.Pattern[bytes]:
    """The glob as a regular expression on bytes, ``?`` one byte and ``*`` any, newlines
    too: what the Lua pattern of _lua_pattern means."""
    escaped = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.compile(escaped.encode(), re.DOTALL)


def _lua_pattern(pattern: str) -> str:
    """The glob as an anchored Lua pattern (Lua escapes its magic characters with %)."""
    escaped = _LUA_MAGIC.sub(r"%\1", pattern)
    return "^" + escaped.replace("*", ".*").replace("?", ".") + "$"


@dataclass(frozen=True)
class Staffing:
    """How a pool of ``total`` workers is split into lanes: pure decisions, no processes."""

    lanes: LaneSet
    total: int

    @property
    def planned(self) -> dict[str, int]:
        """Workers each lane should have (lanes with none left out)."""
        counts: dict[str, int] = {}
        for home in self.lanes.plan(self.total):
            counts[home] = counts.get(home, 0) + 1
        return counts

    def serves(self, home: str) -> tuple[str, ...]:
        return self.lanes.serves(home, self.lanes.plan(self.total))

    def misfits(self, workers: Mapping[int, tuple[str, tuple[str, ...]]]) -> list[int]:
        """The slots (of ``workers``: slot → (lane, lanes served)) to replace, one by one:
        those serving what their lane no longer should, and a lane's workers beyond its
        share (highest slots first) when the pool is not larger than wanted (a pool too
        large stops its extra workers instead, these first)."""
        wrong = [slot for slot, (home, serves) in workers.items() if serves != self.serves(home)]
        if len(workers) > self.total:
            return sorted(wrong)
        planned = self.planned
        by_lane: dict[str, list[int]] = {}
        for slot, (home, _) in sorted(workers.items()):
            by_lane.setdefault(home, []).append(slot)
        for home, slots in by_lane.items():
            extra = len(slots) - planned.get(home, 0)
            if extra > 0:
                wrong.extend(slot for slot in slots[-extra:] if slot not in wrong)
        return sorted(wrong)

    def surplus_first(self, workers: Mapping[int, str]) -> list[int]:
        """The slots of ``workers`` (slot → lane) in the order to stop them when the pool
        is too large: lanes over their share first, then the highest slots."""
        planned = self.planned
        seen: dict[str, int] = {}
        over: set[int] = set()
        for slot, home in sorted(workers.items()):
            seen[home] = seen.get(home, 0) + 1
            if seen[home] > planned.get(home, 0):
                over.add(slot)
        return sorted(workers, key=lambda slot: (slot not in over, -slot))

    def to_start(self, running: Iterable[str], count: int) -> list[str]:
        """The lanes of the next ``count`` workers to start, given the lanes of those
        ``running``: the lane missing the most first (in the lanes' order on a tie)."""
        have: dict[str, int] = {}
        for home in running:
            have[home] = have.get(home, 0) + 1
        planned = self.planned
        order = self.lanes.names
        starts: list[str] = []
        for _ in range(count):
            missing = {lane: planned.get(lane, 0) - have.get(lane, 0) for lane in order}
            lane = max(order, key=lambda name: (missing[name], -order.index(name)))
            if missing[lane] <= 0:
                lane = DEFAULT_LANE
            starts.append(lane)
            have[lane] = have.get(lane, 0) + 1
        return starts
