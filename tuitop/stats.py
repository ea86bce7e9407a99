"""Latency histograms and outcome counters in the store, readable by any view at a fixed cost.

Workers add to a bucket per 10 seconds (Redis: a hash, :mod:`tuitop.backends.redis.stats`;
the database: rows, :mod:`tuitop.backends.db`), with their acks so that recording costs
no round trip of its own. A hash holds counters (``done``,
``failed``, ``retried``, ``dead``, ``timedout``, ``unanswered``, ``enqueued``; a job that
fails in its worker counts once under ``failed``, ``timedout`` or ``unanswered``, as its
handler says, and once under ``retried`` or ``dead``), one gauge (``depth``, the queue's
length as a pool last sampled it in that bucket) and two log-scale histograms:
``w:<i>`` for the wait (enqueue → start) and ``e:<i>`` for end to end (enqueue → done), with
8 buckets per power of two of microseconds (each within 9 % of the true value). A view reads
the last 5 minutes with one pipelined HGETALL per bucket — 31 commands whatever the load.

``done`` counts every message done, ``w`` and ``e`` the notifications only (what the
seed asks an admin to watch: a JIRA import's minutes would drown them). Per lane
(:mod:`tuitop.lanes`), every message's wait and done count go under ``w@<lane>:<i>`` and
``done@<lane>``.

Per topic (:meth:`StatsBatch.topic`), every message finished goes under ``t#n|<topic>``,
its failure under ``t#f|<topic>``, its wait under ``t#w:<i>|<topic>`` and its run time
(start → end) under ``t#r:<i>|<topic>``; the topic comes last, after the first ``|``, so
that any character in it reads back. Anyone may push a message of any topic: a worker
writes at most MAX_TOPICS names per bucket (the rest under OTHER_TOPIC), the store takes
at most MAX_TOPICS names per bucket whatever the number of workers (Redis: TOPICS_SCRIPT,
atomic; the database: the names counted in the ack's transaction, so that writers at the
same instant may pass the cap by one name each), and :func:`summarize` keeps the MAX_TOPICS
busiest of a window (the rest folded into OTHER_TOPIC): a bucket's size and a view's table
stay bounded whatever a producer sends.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tuitop.outcome import Outcome

STATS_BUCKET_SECONDS = 10
"""The span of one bucket of counters and histograms."""
STATS_KEEP_SECONDS = 15 * 60
"""How long a stats bucket lives: the views read the last 5 minutes; keep some margin."""
SUBBUCKETS_PER_OCTAVE = 8
WAIT = "w"
RUN = "r"
"""Run time (start → end), per topic only."""
END_TO_END = "e"
TOPIC_PREFIX = "t#"
MAX_TOPICS = 40
"""Topic names one worker writes per bucket, and topics a window keeps (Tuleap has ~30)."""
OTHER_TOPIC = "(other)"
"""Where the topics past MAX_TOPICS are counted."""
MAX_TOPIC_LENGTH = 120
"""Longer topic names are cut (the database's stats row names are VARCHAR(191))."""
DEPTH = "depth"
"""A gauge, not a counter: a window's depth is its newest bucket's."""


def latency_bucket(seconds: float) -> int:
    """The histogram bucket of a latency (negative ones, from clock skew, count as 1 µs)."""
    microseconds = max(seconds * 1e6, 1.0)
    return int(math.log2(microseconds) * SUBBUCKETS_PER_OCTAVE)


MAX_BUCKET_INDEX = 64 * SUBBUCKETS_PER_OCTAVE
"""Past any latency tuitop measures (2**64 µs); a higher index in the store is not
tuitop's, and is left out (its value would overflow a float)."""


def _bucket_index(text: str) -> int | None:
    """A latency bucket's index as written in a field's name; None if it is not one."""
    if not (text.isascii() and text.isdigit()) or len(text) > 4:
        return None
    index = int(text)
    return index if index <= MAX_BUCKET_INDEX else None


def _count(raw: object) -> int | None:
    """A stored count (Redis: bytes, the database: an integer); None if it is not one."""
    try:
        count = int(raw)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
    return count if count >= 0 else None


def bucket_value(index: int) -> float:
    """The latency, in seconds, a bucket stands for (its geometric middle)."""
    return float(2 ** ((index + 0.5) / SUBBUCKETS_PER_OCTAVE) / 1e6)


def bucket_start(now: float) -> int:
    return int(now) - int(now) % STATS_BUCKET_SECONDS


def _lane_kind(kind: str, lane: str | None) -> str:
    return kind if lane is None else f"{kind}@{lane}"


class StatsBatch:
    """What a worker observed since its last flush, added to the store in one go."""

    def __init__(self) -> None:
        self.fields: Counter[str] = Counter()
        self._topics: set[str] = set()
        """The topic names written (or about to be) in ``_topics_bucket``."""
        self._topics_bucket = 0

    def outcome(self, name: str, count: int = 1, lane: str | None = None) -> None:
        """Counts ``name`` (``done`` …) in all, or for ``lane`` only."""
        self.fields[_lane_kind(name, lane)] += count

    def latency(self, kind: str, seconds: float, lane: str | None = None) -> None:
        """Adds a latency of ``kind`` (WAIT, END_TO_END) in all, or for ``lane`` only."""
        self.fields[f"{_lane_kind(kind, lane)}:{latency_bucket(seconds)}"] += 1

    def topic(self, topic: str, *, wait: float | None, run: float, failed: bool = False) -> None:
        """Counts one message of ``topic`` finished (``failed`` or not), its wait (None:
        no enqueue time) and its run time; past MAX_TOPICS names in a bucket, under
        OTHER_TOPIC."""
        name = topic[:MAX_TOPIC_LENGTH]
        if name not in self._topics:
            if len(self._topics) >= MAX_TOPICS:
                name = OTHER_TOPIC
            self._topics.add(name)
        self.fields[f"{TOPIC_PREFIX}n|{name}"] += 1
        if failed:
            self.fields[f"{TOPIC_PREFIX}f|{name}"] += 1
        if wait is not None:
            self.fields[f"{TOPIC_PREFIX}{WAIT}:{latency_bucket(wait)}|{name}"] += 1
        self.fields[f"{TOPIC_PREFIX}{RUN}:{latency_bucket(run)}|{name}"] += 1

    def successor(self) -> StatsBatch:
        """An empty batch that goes on counting topic names where this one is (this one
        is written by another thread)."""
        following = StatsBatch()
        following._topics, following._topics_bucket = set(self._topics), self._topics_bucket
        return following

    def written(self, now: float) -> None:
        """The fields are on their way into the bucket of ``now``: a new bucket starts
        counting topic names afresh from those."""
        start = bucket_start(now)
        if start != self._topics_bucket:
            self._topics_bucket = start
            self._topics = {
                name.partition("|")[2] for name in self.fields if name.startswith(TOPIC_PREFIX)
            }
        self.fields.clear()

    def split(self) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        """The fields as two parts: the plain ones, and each topic's (``n``, ``f``,
        ``w:<i>``, ``r:<i>`` without the prefix and the topic), topics in name order."""
        plain: dict[str, int] = {}
        topics: dict[str, dict[str, int]] = {}
        for name, count in self.fields.items():
            if name.startswith(TOPIC_PREFIX):
                head, _, topic = name[len(TOPIC_PREFIX) :].partition("|")
                topics.setdefault(topic, {})[head] = count
            else:
                plain[name] = count
        return plain, dict(sorted(topics.items()))


@dataclass(frozen=True)
class Percentiles:
    """Latency percentiles in seconds over a window; ``count`` samples (0: all None)."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None


@dataclass(frozen=True)
class LaneStats:
    """One lane's share of a window."""

    done: int
    wait: Percentiles


@dataclass(frozen=True)
class TopicStats:
    """One topic's share of a window: messages finished, failed, their wait and run
    time (``run.max`` is the slowest, within 9 %)."""

    count: int
    failed: int
    wait: Percentiles
    run: Percentiles


@dataclass(frozen=True)
class WindowStats:
    """Counters and latencies over the last ``seconds``."""

    seconds: int
    counts: Mapping[str, int]
    wait: Percentiles
    end_to_end: Percentiles
    depth: int | None = None
    """The queue's length sampled in the window's newest bucket that has a sample."""
    lanes: Mapping[str, LaneStats] = field(default_factory=dict)
    """Per lane that did anything in the window (the default lane included); ``wait`` and
    ``end_to_end`` above are the notifications'."""
    topics: Mapping[str, TopicStats] = field(default_factory=dict)
    """Per topic, the MAX_TOPICS busiest, the rest under OTHER_TOPIC; busiest first.
    Empty unless asked for (:func:`summarize`)."""

    def rate(self, outcome: str) -> float:
        """Events per second over the window."""
        return self.counts.get(outcome, 0) / self.seconds


def percentiles(histogram: Mapping[int, int]) -> Percentiles:
    total = sum(histogram.values())
    if total == 0:
        return Percentiles(0, None, None, None, None)
    ordered = sorted(histogram.items())

    def at(fraction: float) -> float:
        rank = math.ceil(fraction * total)
        seen = 0
        for index, count in ordered:
            seen += count
            if seen >= rank:
                return bucket_value(index)
        return bucket_value(ordered[-1][0])

    return Percentiles(total, at(0.50), at(0.95), at(0.99), bucket_value(ordered[-1][0]))


def summarize(
    buckets: Iterable[Mapping[bytes, bytes]], seconds: int, *, topics: bool = False
) -> WindowStats:
    """Adds up buckets (as ``read_buckets`` returns them) into one window; with
    ``topics``, per topic too (otherwise their fields are skipped)."""
    counts: Counter[str] = Counter()
    per_topic: dict[str, Counter[str]] = {}
    wait: Counter[int] = Counter()
    end_to_end: Counter[int] = Counter()
    lane_done: Counter[str] = Counter()
    lane_wait: dict[str, Counter[int]] = {}
    depth: int | None = None
    skipped = b"" if topics else TOPIC_PREFIX.encode()
    for bucket in buckets:  # newest first
        for raw_field, raw_count in bucket.items():
            if skipped and raw_field.startswith(skipped):
                continue  # a topic's (most of a busy bucket): not read twice for nothing
            name, count = raw_field.decode(errors="replace"), _count(raw_count)
            if count is None:
                continue  # not a count tuitop wrote: left out, not a crash
            if name.startswith(TOPIC_PREFIX):
                head, bar, topic = name[len(TOPIC_PREFIX) :].partition("|")
                if topics and bar:  # not ``t#names``, the bucket's count of names
                    found = per_topic.get(topic)
                    if found is None:  # (setdefault would make a Counter every field)
                        found = per_topic[topic] = Counter()
                    found[head] += count
                continue
            kind, _, index_text = name.partition(":")
            kind, _, lane = kind.partition("@")
            index = _bucket_index(index_text)
            if index_text and index is None:
                continue  # a latency bucket tuitop never writes
            if name == DEPTH:
                depth = count if depth is None else depth
            elif kind == WAIT and index is not None and lane:
                lane_wait.setdefault(lane, Counter())[index] += count
            elif kind == WAIT and index is not None:
                wait[index] += count
            elif kind == END_TO_END and index is not None:
                end_to_end[index] += count
            elif lane:
                if kind == Outcome.DONE:
                    lane_done[lane] += count
            else:
                counts[kind] += count
    lanes = {
        lane: LaneStats(lane_done[lane], percentiles(lane_wait.get(lane, Counter())))
        for lane in sorted(set(lane_done) | set(lane_wait))
    }
    return WindowStats(
        seconds,
        dict(counts),
        percentiles(wait),
        percentiles(end_to_end),
        depth,
        lanes,
        _topic_stats(per_topic),
    )


def _topic_stats(per_topic: Mapping[str, Counter[str]]) -> dict[str, TopicStats]:
    """The MAX_TOPICS busiest topics (most messages first, then by name), the others
    added into OTHER_TOPIC."""
    ranked = sorted(per_topic, key=lambda topic: (-per_topic[topic]["n"], topic))
    kept: dict[str, Counter[str]] = {}
    named = 0
    for topic in ranked:
        name = topic if named < MAX_TOPICS and topic != OTHER_TOPIC else OTHER_TOPIC
        named += name != OTHER_TOPIC
        kept.setdefault(name, Counter()).update(per_topic[topic])
    return {name: _one_topic(fields) for name, fields in kept.items()}


def _one_topic(fields: Counter[str]) -> TopicStats:
    wait: Counter[int] = Counter()
    run: Counter[int] = Counter()
    for head, count in fields.items():
        kind, _, index_text = head.partition(":")
        index = _bucket_index(index_text)
        if index is None:
            continue
        if kind == WAIT:
            wait[index] += count
        elif kind == RUN:
            run[index] += count
    return TopicStats(fields["n"], fields["f"], percentiles(wait), percentiles(run))
