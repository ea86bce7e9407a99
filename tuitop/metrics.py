"""The Prometheus series tuitop counts, and the counting, done in the process where each
event happens (a worker for what it runs, the pool for what it recovers).

**Tuleap's series**, with Tuleap's names, labels and buckets, so that dashboards built on
Tuleap's own metrics keep working (Tuleap's ``src/common/Queue/QueueInstrumentation.php``,
through ``src/common/Instrument/Prometheus/Prometheus.php``, which prefixes every name
with ``tuleap_`` and puts a ``platform`` label first when ``$prometheus_platform`` is set):

* ``tuleap_queue_events_total{queue, topic, status}``: ``dequeued`` as a worker starts a
  message, ``done``, ``requeued`` (a retry), ``discarded`` (tuitop's dead letters, where
  Tuleap deletes), ``timedout`` (beside ``requeued`` or ``discarded``, as Tuleap counts
  it); the pool counts ``requeued``/``discarded`` for what it recovers from a worker that
  is gone, and ``timedout`` for a worker it killed at the time limit. ``enqueued`` is
  counted where messages are pushed — Tuleap's front ends, in Tuleap's own metrics — and
  never by a pool, which pushes none. ``queue`` is always Tuleap's queue,
  ``app_user_events`` (tuitop's lanes are inside it; their own series are tuitop's);
* ``tuleap_queue_events_duration`` (histogram, no label but ``platform``): seconds from
  the enqueue to the end of the job, done or failed, as Tuleap's worker observes it.

**tuitop's**, per pool: ``tuitop_wait_seconds{pool, topic}`` (enqueue → start, every
message started) and ``tuitop_end_to_end_seconds{pool, topic}`` (enqueue → done).

**Counting across processes.** Workers are separate processes, recycled after
``--max-messages`` and killed at times, and the pool serves ``/metrics``. prometheus_client's
multiprocess mode fits that: each process writes its values into a memory-mapped file of
its own in the pool's private directory (a write to memory: no round trip to the store,
no system call), and the pool sums every file at scrape time. A worker's file outlives the
worker — a recycled or killed worker's counts stay in the totals, up to its last
increment — and the pool folds a gone worker's file into an archive file
(:func:`fold_into_archive`), so the files to read stay as many as the live processes.
Another design (workers sending counts to the pool over a pipe) would lose what a killed
worker had not sent, and add a channel to every worker: the files need neither.

Each event is written as it happens, so that a worker killed in the middle of a long job
has counted all it did before it (adding up a batch's counts for one write would leave
them in its memory while the job runs). The cost is a worker's, not the store's: about
2.5 µs a counter and 5 µs a histogram on this machine, some 20 µs a message in all.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import Counter, Histogram, values
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from tuitop.lanes import TULEAP_QUEUE
from tuitop.message import Message
from tuitop.outcome import Outcome

TULEAP_NAMESPACE = "tuleap"
TULEAP_EVENTS = "queue_events"
TULEAP_EVENTS_HELP = "Total number of queue events"
TULEAP_DURATION = "queue_events_duration"
TULEAP_DURATION_HELP = "Duration of background worker events (from enqueue to done) in seconds"
TULEAP_DURATION_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 20, 60, 120)
DEQUEUED, DONE, REQUEUED, DISCARDED, TIMEDOUT = (
    "dequeued",
    "done",
    "requeued",
    "discarded",
    "timedout",
)
STATUS_OF_RESULT = {Outcome.RETRIED: REQUEUED, Outcome.DEAD: DISCARDED}
"""A failed or recovered message's fate (the store's word) as Tuleap's status."""

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600,
)  # fmt: skip
"""tuitop's latency buckets: from a notification's milliseconds to a JIRA import's hour."""
MAX_TOPICS = 1000
"""Topics a process gives a label of their own, those of the processes gone (the archive)
included; the rest count as ``OTHER_TOPIC`` (a producer sending endless new topics must not
grow the series without end, however many workers are recycled)."""
MAX_TOPIC_LENGTH = 120
"""Longer topic names are cut in the labels (every series of a topic repeats it: in each
process's file, and in every scrape), as the stats cut them."""
OTHER_TOPIC = "other"
ARCHIVE = "archive"
"""The pid part of the files that hold the counts of processes gone."""
KINDS = ("counter", "histogram")
"""The kinds of files folded into the archive (tuitop's gauges are the pool's)."""


@dataclass(frozen=True)
class CountingTarget:
    """Where a process of a pool counts: the pool's private directory, and the labels."""

    directory: str
    pool: str
    platform: str | None = None
    """Tuleap's ``$prometheus_platform``: a ``platform`` label on Tuleap's series."""


def use_directory(directory: str) -> None:
    """Makes every metric this process creates from now on write into ``directory``.

    prometheus_client picks its value class once, when it is imported, from the
    environment; the forkserver imports it before a worker knows where to count, so the
    class is set here (as prometheus_client's own tests do), and the variable for the
    files' place."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class Counting:
    """What a worker or the pool counts as things happen; this one counts nothing (the
    pool serves no metrics)."""

    def started(self, message: Message, at: float) -> None:
        """A worker starts running ``message`` (Unix time ``at``)."""

    def done(self, message: Message, at: float) -> None:
        """Its job is done."""

    def ended(self, message: Message, at: float) -> None:
        """Its job ended, done or failed (Tuleap's duration)."""

    def failed(self, message: Message, result: Outcome, outcome: Outcome) -> None:
        """It failed: ``result`` is where it went (``retried``, ``dead``, or ``gone``:
        recovered meanwhile by the pool, which counted it), ``outcome`` how it failed
        (``timedout`` for a task past the time limit)."""

    def recovered(self, outcomes: Sequence[tuple[str, Outcome]], timed_out: bool) -> None:
        """The pool recovered a gone worker's messages: (topic, ``retried``/``dead``) of
        each, oldest first; ``timed_out``: the first was cut at the time limit."""


class Counts(Counting):
    """Counts into the files of a :class:`CountingTarget` (call :func:`use_directory`
    first). One per process; not thread-safe (a worker counts from its main thread)."""

    def __init__(self, target: CountingTarget) -> None:
        platform = () if target.platform is None else ("platform",)
        self._platform = () if target.platform is None else (target.platform,)
        self._pool = target.pool
        self._events = Counter(
            TULEAP_EVENTS,
            TULEAP_EVENTS_HELP,
            (*platform, "queue", "topic", "status"),
            namespace=TULEAP_NAMESPACE,
            registry=None,
        )
        duration = Histogram(
            TULEAP_DURATION,
            TULEAP_DURATION_HELP,
            platform,
            namespace=TULEAP_NAMESPACE,
            buckets=TULEAP_DURATION_BUCKETS,
            registry=None,
        )
        self._duration = duration.labels(*self._platform) if platform else duration
        self._wait = Histogram(
            "tuitop_wait_seconds",
            "Seconds from the enqueue to the start of a job, every job started",
            ("pool", "topic"),
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self._end_to_end = Histogram(
            "tuitop_end_to_end_seconds",
            "Seconds from the enqueue to the end of a job done",
            ("pool", "topic"),
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self._counters: dict[tuple[str, str], Counter] = {}
        self._waits: dict[str, Histogram] = {}
        self._ends: dict[str, Histogram] = {}
        # The topics the workers gone labelled are labels here too, and count against
        # the cap: a recycled worker, fed new topics by a hostile producer, adds none
        # once the archive holds MAX_TOPICS (a fold only ever adds up: a topic is
        # never moved to OTHER_TOPIC after the fact, which would lower it).
        self._topics: set[str] = archived_topics(target.directory)

    def _topic(self, topic: str) -> str:
        topic = topic[:MAX_TOPIC_LENGTH]
        if topic in self._topics:
            return topic
        if len(self._topics) >= MAX_TOPICS:
            return OTHER_TOPIC
        self._topics.add(topic)
        return topic

    def _observe(
        self, histogram: Histogram, children: dict[str, Histogram], topic: str, seconds: float
    ) -> None:
        child = children.get(topic)
        if child is None:
            child = children[topic] = histogram.labels(self._pool, topic)
        child.observe(max(seconds, 0.0))  # a clock skew's negative wait counts as none

    def _count(self, topic: str, status: str) -> None:
        counter = self._counters.get((topic, status))
        if counter is None:
            counter = self._events.labels(*self._platform, TULEAP_QUEUE, topic, status)
            self._counters[(topic, status)] = counter
        counter.inc()

    def started(self, message: Message, at: float) -> None:
        topic = self._topic(message.topic)
        self._count(topic, DEQUEUED)
        if message.enqueue_ts > 0:
            self._observe(self._wait, self._waits, topic, at - message.enqueue_ts)

    def done(self, message: Message, at: float) -> None:
        topic = self._topic(message.topic)
        self._count(topic, DONE)
        if message.enqueue_ts > 0:
            self._observe(self._end_to_end, self._ends, topic, at - message.enqueue_ts)

    def ended(self, message: Message, at: float) -> None:
        if message.enqueue_ts > 0:
            self._duration.observe(max(at - message.enqueue_ts, 0.0))

    def failed(self, message: Message, result: Outcome, outcome: Outcome) -> None:
        self._fate(message.topic, result, timed_out=outcome is Outcome.TIMEDOUT)

    def recovered(self, outcomes: Sequence[tuple[str, Outcome]], timed_out: bool) -> None:
        for index, (topic, result) in enumerate(outcomes):
            self._fate(topic, result, timed_out=timed_out and index == 0)

    def _fate(self, topic: str, result: Outcome, *, timed_out: bool) -> None:
        status = STATUS_OF_RESULT.get(result)
        if status is None:
            return  # GONE: recovered meanwhile, and counted by whoever recovered it
        label = self._topic(topic)
        self._count(label, status)
        if timed_out:
            self._count(label, TIMEDOUT)


def open_counting(target: CountingTarget | None) -> Counting:
    """What this process counts with: nothing without a target."""
    if target is None:
        return Counting()
    use_directory(target.directory)
    return Counts(target)


def fold_into_archive(directory: str, pid: int) -> None:
    """Adds the counts of the gone process ``pid`` to the archive files and removes its
    own, so that a scrape reads as many files as there are live processes, whatever the
    number of workers recycled. Counters and histograms only (tuitop's gauges are the
    pool's, read at scrape time). The caller keeps scrapes out meanwhile: between the
    archive's replacement and the removal, a scrape would count them twice."""
    for kind in KINDS:
        gone = os.path.join(directory, f"{kind}_{pid}.db")
        if not os.path.exists(gone):
            continue
        archive = os.path.join(directory, f"{kind}_{ARCHIVE}.db")
        sources = [path for path in (archive, gone) if os.path.exists(path)]
        merged = MultiProcessCollector.merge(sources, accumulate=False)  # type: ignore[no-untyped-call]
        # Written aside, then renamed over the archive: a scrape globs *.db only.
        temporary = os.path.join(directory, f"{kind}_{ARCHIVE}.tmp")
        if os.path.exists(temporary):
            os.remove(temporary)  # left by a fold cut short: start over
        archived = MmapedDict(temporary)  # type: ignore[no-untyped-call]
        try:
            for metric in merged:
                for sample in metric.samples:
                    key = mmap_key(
                        metric.name,
                        sample.name,
                        list(sample.labels),
                        list(sample.labels.values()),
                        metric.documentation,
                    )
                    archived.write_value(key, sample.value, 0.0)  # type: ignore[no-untyped-call]
        finally:
            archived.close()  # type: ignore[no-untyped-call]
        os.replace(temporary, archive)
        os.remove(gone)


def archived_topics(directory: str) -> set[str]:
    """The topics the archive of ``directory`` labels already (none before a fold)."""
    topics: set[str] = set()
    for kind in KINDS:
        try:
            merged = MultiProcessCollector.merge(  # type: ignore[no-untyped-call]
                [os.path.join(directory, f"{kind}_{ARCHIVE}.db")], accumulate=False
            )
        except FileNotFoundError:  # not made yet (once made, it is replaced, never removed)
            continue
        topics.update(
            sample.labels["topic"]
            for metric in merged
            for sample in metric.samples
            if "topic" in sample.labels
        )
    return topics
