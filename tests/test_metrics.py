"""The pool's ``/metrics`` (``--metrics-port``): the real ``tuitop --no-ui`` on a real Redis
or MariaDB, known traffic pushed, ``/metrics`` read over HTTP and parsed with
prometheus_client's own parser, Tuleap's series checked count by count.

Tuleap's jobs run through the stand-in of Tuleap's task process (tests/bin/tuleap): it
fails, or sleeps past the time limit, when its message asks.
"""

from __future__ import annotations

import contextlib
import glob
import json
import multiprocessing
import os
import socket
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import redis
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample

from tests.handlers_for_tests import RUNS_KEY
from tests.pool import (
    FAST_RETRY,
    Pool,
    free_port,
    nothing_pending,
    push_all,
    run_tuitop,
    scrape,
    wait_until,
    worker_heartbeats,
    write_config,
)
from tests.tuleap import TASK, Tuleap, php_message
from tests.tuleapdb import database_inc, enqueue
from tuitop.backends.redis import keys
from tuitop.config import DatabaseSettings
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.message import Message, encode
from tuitop.metrics import (
    MAX_TOPIC_LENGTH,
    MAX_TOPICS,
    OTHER_TOPIC,
    CountingTarget,
    fold_into_archive,
    open_counting,
)

QUEUE = "app_user_events"
DEFAULT_LANE, LONG_LANE = "latency_10s", "latency_15m"
FINE, FLAKY, DOOMED, SLOW = (
    "tuleap.fts.index-item",
    "tuleap.git.hooks.post-receive",
    "tuleap.tracker.artifact.deletion",
    "tuleap.tracker.creation.jira",  # on the default lanes' latency_15m
)


@pytest.fixture
def tuleap(tmp_path: Path) -> Tuleap:
    return Tuleap(tmp_path)


def series(samples: list[Sample], name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The samples named ``name``, by the values of ``labels``."""
    return {
        tuple(sample.labels[label] for label in labels): sample.value
        for sample in samples
        if sample.name == name
    }


def events(samples: list[Sample]) -> dict[tuple[str, str], float]:
    """Tuleap's ``queue_events_total`` by (topic, status), checking its other labels."""
    found = {}
    for sample in samples:
        if sample.name == "tuleap_queue_events_total":
            assert sample.labels["queue"] == QUEUE
            found[(sample.labels["topic"], sample.labels["status"])] = sample.value
    return found


def up(port: int) -> list[Sample]:
    def answered() -> list[Sample] | None:
        try:
            return scrape(port)
        except OSError:
            return None

    return wait_until(answered, 30, "/metrics to answer")  # type: ignore[no-any-return]


def metrics_directories(pool: Pool) -> list[str]:
    return glob.glob(os.path.join(tempfile.gettempdir(), f"tuitop-metrics-{pool.pid}-*"))


def start_pool(
    pools: list[Pool], tmp_path: Path, tuleap: Tuleap, config: Path, port: int, *args: str
) -> Pool:
    pool = Pool(
        tmp_path,
        config,
        *TASK,
        "--task-dir",
        str(tuleap.root),
        "--metrics-port",
        str(port),
        *args,
        env=tuleap.env,
    ).start()
    pools.append(pool)
    return pool


def message(topic: str, ident: str, enqueue_ts: float, **standin: object) -> bytes:
    payload = {"id": ident, **({"standin": standin} if standin else {})}
    return php_message(topic, json.dumps(payload), enqueue_ts)


def test_tuleaps_series_count_known_traffic_exactly(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, redis_server: EmbeddedRedis
) -> None:
    client = redis_server.client()
    config = write_config(
        tmp_path, port=redis_server.port, workers=2, extra="$prometheus_platform = 'forge-01';"
    )
    port = free_port()
    pool = start_pool(pools, tmp_path, tuleap, config, port, *FAST_RETRY, "--job-timeout", "1")
    wait_until(
        lambda: sum(series(up(port), "tuitop_workers_running", "lane").values()) == 2,
        30,
        "2 workers running",
    )
    now = time.time()
    push_all(
        client,
        [
            *(message(FINE, f"fine-{i}", now) for i in range(10)),
            message(FLAKY, "flaky", now, fail_times=2),  # done at its third run
            message(DOOMED, "doomed", now, exit=3),  # 1 run + 3 tries, then given up
            message(SLOW, "slow", now, sleep=3),  # past the time limit: not run again
            b"not json",  # dead-lettered at once
        ],
    )
    wait_until(lambda: client.llen(keys.DEAD_LETTERS) == 3, 60, "3 dead letters")
    wait_until(lambda: nothing_pending(client), 30, "nothing pending")
    samples = scrape(port)
    assert events(samples) == {
        (FINE, "dequeued"): 10,
        (FINE, "done"): 10,
        (FLAKY, "dequeued"): 3,
        (FLAKY, "requeued"): 2,
        (FLAKY, "done"): 1,
        (DOOMED, "dequeued"): 4,
        (DOOMED, "requeued"): 3,
        (DOOMED, "discarded"): 1,
        (SLOW, "dequeued"): 1,
        (SLOW, "timedout"): 1,
        (SLOW, "discarded"): 1,
        ("notopic", "dequeued"): 1,
        ("notopic", "discarded"): 1,
    }
    assert {s.labels["platform"] for s in samples if s.name.startswith("tuleap_")} == {"forge-01"}
    # Tuleap's histogram: every job that ended (the one without a timestamp aside), with
    # Tuleap's buckets, and no label but the platform.
    duration = series(samples, "tuleap_queue_events_duration_bucket", "le", "platform")
    assert [le for le, _ in duration] == [
        "0.1", "0.5", "1.0", "2.0", "5.0", "10.0", "20.0", "60.0", "120.0", "+Inf",
    ]  # fmt: skip
    assert series(samples, "tuleap_queue_events_duration_count") == {(): 18}
    assert series(samples, "tuitop_wait_seconds_count", "topic") == {
        (FINE,): 10, (FLAKY,): 3, (DOOMED,): 4, (SLOW,): 1,
    }  # fmt: skip
    assert series(samples, "tuitop_end_to_end_seconds_count", "topic") == {(FINE,): 10, (FLAKY,): 1}
    pool_name = socket.gethostname()
    assert series(samples, "tuitop_workers_running", "pool", "lane") == {
        (pool_name, DEFAULT_LANE): 1,
        (pool_name, LONG_LANE): 1,
    }
    assert series(samples, "tuitop_workers_wanted", "lane") == {
        (DEFAULT_LANE,): 1,
        (LONG_LANE,): 1,
    }
    assert series(samples, "tuitop_dead_letters") == {(): 3}
    assert series(samples, "tuitop_retries_waiting") == {(): 0}
    assert series(samples, "tuitop_queue_depth", "lane") == {(DEFAULT_LANE,): 0, (LONG_LANE,): 0}
    assert series(samples, "tuitop_queue_oldest_age_seconds") == {}
    assert series(samples, "tuitop_store_up") == {(): 1}
    assert series(samples, "tuitop_config_reloads_total") == {(): 0}

    # No worker left: what waits is counted per lane, and its age read.
    config.write_text(config.read_text().replace("workers = 2", "workers = 0"))
    wait_until(
        lambda: sum(series(scrape(port), "tuitop_workers_running", "lane").values()) == 0,
        30,
        "no worker running",
    )
    push_all(client, [message(FINE, f"waiting-{i}", time.time() - 30) for i in range(5)])
    # The store's figures are a snapshot kept for a second.
    samples = wait_until(
        lambda: (
            (found := scrape(port))
            and series(found, "tuitop_queue_depth", "lane")[(DEFAULT_LANE,)] == 5
            and found
        ),
        5,
        "the depth of 5",
    )
    [age] = series(samples, "tuitop_queue_oldest_age_seconds", "lane").values()
    assert 30 <= age < 60
    assert series(samples, "tuitop_config_reloads_total")[()] >= 1
    assert series(samples, "tuitop_workers_wanted", "lane") == {
        (DEFAULT_LANE,): 0,
        (LONG_LANE,): 0,
    }
    config.write_text(config.read_text() + "\n$sys_nb_backend_workers = ;\n")
    wait_until(lambda: series(scrape(port), "tuitop_config_error") == {(): 1}, 30, "the refusal")
    assert series(scrape(port), "tuitop_config_refused_total")[()] >= 1
    assert metrics_directories(pool)
    client.close()
    assert pool.stop() == 0
    assert not metrics_directories(pool)  # the pool's private directory is gone with it


class Scraper(threading.Thread):
    """Scrapes ``/metrics`` every 20 ms until stopped, keeping every answer."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.scrapes: list[list[Sample]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.02):
            with contextlib.suppress(OSError):
                self.scrapes.append(scrape(self.port))

    def stop(self) -> list[list[Sample]]:
        self._done.set()
        self.join(5)
        return self.scrapes


def test_counts_stay_monotonic_across_recycled_and_killed_workers(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis
) -> None:
    client = redis_server.client()
    config = write_config(tmp_path, port=redis_server.port, workers=2, extra="$tuitop_lanes = '';")
    port = free_port()
    pool = Pool(
        tmp_path,
        config,
        *("--handlers", "tests.handlers_for_tests", "--max-messages", "10"),
        *("--metrics-port", str(port), "--grace", "1"),
    ).start()
    pools.append(pool)
    up(port)
    scraper = Scraper(port)
    scraper.start()
    push_all(client, [encode("test.count", {"id": i}) for i in range(300)])
    wait_until(lambda: client.llen(RUNS_KEY) == 300, 60, "300 runs")
    wait_until(lambda: nothing_pending(client), 30, "nothing pending")
    # 30 workers or more were recycled: every count is there, once.
    assert pool.log().count("Max messages reached") >= 28
    samples = scrape(port)
    assert events(samples) == {("test.count", "dequeued"): 300, ("test.count", "done"): 300}
    # Their files were folded as they went: as many as the live processes' (the pool's,
    # two workers'), a counter and a histogram file each, and the two archives.
    [directory] = metrics_directories(pool)
    assert len(glob.glob(os.path.join(directory, "*.db"))) <= 2 * 3 + 2

    # A worker killed in the middle of a job: what it counted stays, and the pool counts
    # the message it held, given back for a retry.
    push_all(client, [encode("test.slow", {"id": "cut", "seconds": 30})])
    busy = wait_until(
        lambda: [b for b in worker_heartbeats(client).values() if b["topic"] == "test.slow"],
        what="the worker running test.slow",
    )[0]
    before = events(scrape(port))
    psutil.Process(int(busy["pid"])).kill()
    pool.wait_for_log("Recovered 1 message")
    after = events(scrape(port))
    assert after == {**before, ("test.slow", "requeued"): 1}
    assert before[("test.slow", "dequeued")] == 1

    # Not one scrape in the run saw a count go down.
    scrapes = scraper.stop()
    seen: dict[tuple[object, ...], float] = {}
    for samples in scrapes:
        for sample in samples:
            if sample.name.endswith(("_total", "_count", "_sum", "_bucket")):
                key = (sample.name, *sorted(sample.labels.items()))
                assert sample.value >= seen.get(key, 0.0), key
                seen[key] = sample.value
    assert len(scrapes) > 10
    client.close()
    assert pool.stop() == 0


def test_a_worker_the_pool_kills_at_the_time_limit_is_counted_timed_out(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis
) -> None:
    client = redis_server.client()
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    port = free_port()
    pool = Pool(
        tmp_path,
        config,
        *("--handlers", "tests.handlers_for_tests", "--job-timeout", "1", "--grace", "1"),
        *("--metrics-port", str(port), "--retry-delay", "30"),
    ).start()
    pools.append(pool)
    up(port)
    push_all(client, [encode("test.sleep", {"id": "s", "seconds": 60})])
    pool.wait_for_log("Task timed out")
    pool.wait_for_log("Recovered 1 message")
    # The built-in handler ran in the worker: the pool killed it, and counts for it
    # (given up, as Tuleap drops a job past its time limit: discarded).
    assert events(scrape(port)) == {
        ("test.sleep", "dequeued"): 1,
        ("test.sleep", "timedout"): 1,
        ("test.sleep", "discarded"): 1,
    }
    client.close()
    assert pool.stop() == 0


def test_a_port_taken_is_said_plainly_at_the_start(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for mode in (("--no-ui",), ()):  # the daemon, and the UI before it starts its pool
            result = run_tuitop(
                *mode, "--config", str(config), "--log-file", "", "--metrics-port", str(port)
            )
            assert result.returncode == 1
            assert result.stderr.strip().splitlines()[-1] == (
                f"tuitop: cannot serve /metrics on 127.0.0.1:{port}: Address already in use"
            )
            assert "Traceback" not in result.stderr + result.stdout
    assert not [
        path
        for path in glob.glob(os.path.join(tempfile.gettempdir(), "tuitop-metrics-*"))
        if not psutil.pid_exists(int(os.path.basename(path).split("-")[2]))
    ]  # the refused pool left no directory


def test_tuleaps_series_on_the_database_queue(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, database: DatabaseSettings
) -> None:
    config = database_inc(tmp_path, database, workers=2, extra="$tuitop_lanes = '';")
    port = free_port()
    pool = start_pool(pools, tmp_path, tuleap, config, port, *FAST_RETRY, "--grace", "1")
    pool.wait_for_log(r"Start service", count=2)
    for i in range(6):
        enqueue(database, FINE, {"id": f"fine-{i}"})
    enqueue(database, FLAKY, {"id": "flaky", "standin": {"fail_times": 1}})
    wait_until(lambda: len(tuleap.runs("end")) >= 8, 60, "8 task runs")
    wait_until(lambda: events(scrape(port)).get((FLAKY, "done")) == 1, 30, "the flaky one done")
    samples = scrape(port)
    assert events(samples) == {
        (FINE, "dequeued"): 6,
        (FINE, "done"): 6,
        (FLAKY, "dequeued"): 2,
        (FLAKY, "requeued"): 1,
        (FLAKY, "done"): 1,
    }
    assert series(samples, "tuleap_queue_events_duration_count") == {(): 8}
    assert series(samples, "tuitop_workers_running", "lane") == {(DEFAULT_LANE,): 2}
    assert series(samples, "tuitop_queue_depth", "lane") == {(DEFAULT_LANE,): 0}
    assert series(samples, "tuitop_dead_letters") == {(): 0}
    # A worker killed in the middle of a task: the pool counts the row it recovers.
    enqueue(database, SLOW, {"id": "cut", "standin": {"sleep": 30}})
    [run] = wait_until(lambda: tuleap.runs_of("cut"), 30, "the slow task to start")
    psutil.Process(int(str(run["ppid"]))).kill()
    pool.wait_for_log("Recovered 1 message")
    after = events(scrape(port))
    assert after[(SLOW, "dequeued")] == 1 and after[(SLOW, "requeued")] == 1
    assert pool.stop() == 0
    assert not metrics_directories(pool)


def test_no_metrics_port_serves_and_counts_nothing(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    pool = Pool(tmp_path, config, "--handlers", "tests.handlers_for_tests").start()
    pools.append(pool)
    push_all(redis_client, [encode("test.count", {"id": 1})])
    wait_until(lambda: redis_client.llen(RUNS_KEY) == 1, what="the run")
    assert not metrics_directories(pool)
    assert "Metrics on" not in pool.log()
    assert pool.stop() == 0


def count_topics(directory: str, topics: list[str]) -> None:
    """A worker's life: one message of each of ``topics``."""
    counts = open_counting(CountingTarget(directory, "hostile"))
    for topic in topics:
        counts.started(Message(topic, {}, 0.0, 0, b""), time.time())


def life(directory: str, topics: list[str], *, folded: bool = True) -> int:
    """A worker process that counts ``topics`` and ends, folded as the pool folds it."""
    worker = multiprocessing.get_context("spawn").Process(
        target=count_topics, args=(directory, topics)
    )
    worker.start()
    worker.join(60)
    assert worker.exitcode == 0 and worker.pid is not None
    if folded:
        fold_into_archive(directory, worker.pid)
    return worker.pid


def topic_counts(directory: str) -> dict[str, float]:
    """``tuleap_queue_events_total`` by topic, as a scrape sums the files."""
    topics: dict[str, float] = {}
    for metric in MultiProcessCollector(None, directory).collect():  # type: ignore[no-untyped-call]
        for sample in metric.samples:
            if sample.name == "tuleap_queue_events_total":
                topic = sample.labels["topic"]
                topics[topic] = topics.get(topic, 0) + sample.value
    return topics


def test_endless_topics_through_recycled_workers_stay_capped(tmp_path: Path) -> None:
    # A hostile producer sends a new topic with every message; each worker gives the
    # first MAX_TOPICS a label, and is recycled: the next one must not add as many again.
    directory = str(tmp_path)
    for generation in range(3):
        first = generation * MAX_TOPICS
        life(directory, [f"hostile.{index}" for index in range(first, first + MAX_TOPICS)])
    topics = topic_counts(directory)
    assert len(topics) <= MAX_TOPICS + 1
    assert sum(topics.values()) == 3 * MAX_TOPICS  # every message still counted, once
    assert topics[OTHER_TOPIC] == 2 * MAX_TOPICS

    # Past the cap, a topic two live workers count is never moved to OTHER_TOPIC as one
    # of them is folded: its counter would go down.
    second = life(directory, ["late.topic"], folded=False)
    life(directory, ["late.topic"], folded=False)
    before = topic_counts(directory)
    fold_into_archive(directory, second)
    after = topic_counts(directory)
    for topic, count in before.items():
        assert after.get(topic, 0) >= count, topic


def test_a_huge_topic_name_is_cut_in_the_labels(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis
) -> None:
    # One message whose topic is a megabyte: every series of its topic (a counter, and a
    # histogram's two dozen buckets) would carry it, in the worker's file and each scrape.
    client = redis_server.client()
    config = write_config(tmp_path, port=redis_server.port, workers=1, extra="$tuitop_lanes = '';")
    port = free_port()
    pool = Pool(
        tmp_path,
        config,
        *("--handlers", "tests.handlers_for_tests", "--metrics-port", str(port)),
    ).start()
    pools.append(pool)
    up(port)
    huge = "hostile." + "x" * 1_000_000
    push_all(client, [encode(huge, {"id": 1}), encode("test.count", {"id": 2})])
    wait_until(lambda: events(scrape(port)).get(("test.count", "done")) == 1, 60, "test.count done")
    wait_until(lambda: nothing_pending(client), 30, "nothing pending")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read()
    assert len(text) < 200_000
    [directory] = metrics_directories(pool)
    assert sum(os.path.getsize(path) for path in glob.glob(os.path.join(directory, "*.db"))) < (
        10_000_000
    )
    cut = {topic for topic, _ in events(scrape(port)) if topic.startswith("hostile.")}
    assert cut == {huge[:MAX_TOPIC_LENGTH]}
    client.close()
    assert pool.stop() == 0
