"""Scenes for the UI's pictures: a real Redis filled with a fixed picture of pools,
workers, queue, latency and dead letters, seen at a frozen time.

The SVG snapshot tests and ``scripts/screenshots.py`` both draw these scenes, so the README's
screenshots are the very screens the tests check. The scene's Redis listens on a fixed port
(outside the ephemeral range) because the header shows the address.
"""

from __future__ import annotations

import fcntl
import os
import random
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from textual.pilot import Pilot
from textual.widgets import DataTable

from tuitop.backends.redis import keys
from tuitop.backends.redis.queue import dead_letter_entry
from tuitop.backends.redis.stats import flush_into
from tuitop.config import load_config
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.lanes import DEFAULT_LANE, DEFAULT_SPEC, LONG_LANE
from tuitop.message import encode
from tuitop.stats import StatsBatch, bucket_start
from tuitop.tui.app import TuitopApp
from tuitop.tui.logtail import FileTail
from tuitop.tui.source import SnapshotSource
from tuitop.tui.widgets import LogPanel
from tuitop.tui.worker_screen import WorkerScreen
from tuitop.tui.workers import WorkersPanel

LANES = DEFAULT_SPEC
JIRA = "tuleap.tracker.creation.jira"
LANE_WORKER = {"lane": LONG_LANE, "serves": f"{LONG_LANE},{DEFAULT_LANE}"}
SCENE_PORT = 23791
FROZEN = 1795856400.0 + 42.0
"""2026-11-28 09:00:42 UTC: the time every scene is seen at."""
SIZE = (132, 42)
TOPIC = "tuleap.tracker.artifact"
GIT = "tuleap.git.hooks.post-receive"
FILES = "/etc/tuleap/conf/local.inc,/etc/tuleap/conf/redis.inc"
CONFIG_ERROR = (
    "/etc/tuleap/conf/local.inc:14:28: syntax error, unexpected end of line, expecting ';'"
)
TRACEBACK = """Traceback (most recent call last):
  File "tuitop/worker.py", line 341, in _run_job
  File "tuitop/notification.py", line 158, in send
smtplib.SMTPRecipientsRefused: {'ghost@example.com': (550, b'5.1.1 User unknown')}"""


@contextmanager
def utc() -> Iterator[None]:
    """Times on screen in UTC, whatever the machine's zone; the zone is restored after."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


@contextmanager
def scene_redis(directory: Path) -> Iterator[EmbeddedRedis]:
    """The scene's Redis on its fixed port; runs on one machine take turns (a lock file)."""
    with open(Path(tempfile.gettempdir()) / "tuitop-scene-redis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with EmbeddedRedis(port=SCENE_PORT, directory=directory / "scene-redis") as server:
            yield server


def _pool(client: redis.Redis, name: str, host: str, pid: int, **fields: object) -> None:
    values: dict[str, object] = {
        "host": host,
        "pid": pid,
        "wanted": 2,
        "configured": 2,
        "running": 2,
        "files": FILES,
        "log_level": "info",
        "async_scope": "all",
        "redis": f"127.0.0.1:{SCENE_PORT}",
        "loaded_at": FROZEN - 3600 - 17,
        "config_error": "",
        "beat": FROZEN - 0.4,
        "lanes": LANES,
    }
    values.update(fields)
    client.hset(keys.pool(name), mapping=values)  # type: ignore[arg-type]
    client.sadd(keys.POOLS, name)
    client.zadd(keys.LANES, {LONG_LANE: FROZEN - 0.4})


def _worker(
    client: redis.Redis, pool: str, slot: int, host: str, pid: int, **fields: object
) -> str:
    worker_id = f"{pool}/{slot}#{pid}"
    values: dict[str, object] = {
        "host": host,
        "pid": pid,
        "pool": pool,
        "slot": slot,
        "state": "idle",
        "since": FROZEN - 2,
        "job_started": 0,
        "topic": "",
        "done": 0,
        "failed": 0,
        "processed": 0,
        "max_messages": 1000,
        "rss": 38_000_000 + slot * 1_300_000,
        "cpu": 0.0,
        "beat": FROZEN - 0.3,
        "lane": DEFAULT_LANE,
        "serves": DEFAULT_LANE,
    }
    values.update(fields)
    if values["state"] != "dead":
        client.hset(keys.heartbeat(worker_id), mapping=values)  # type: ignore[arg-type]
        client.set(keys.worker_alive(worker_id), 1)  # as a worker writing its hash says
    client.sadd(keys.WORKERS, worker_id)
    return worker_id


def _history(client: redis.Redis, *, busy: bool) -> None:
    """Five minutes of 10 s buckets: counters, latency samples, depth samples."""
    chance = random.Random(7)
    for age in range(0, 310, 10):
        start = bucket_start(FROZEN) - age
        batch = StatsBatch()
        rate = 18 + chance.randint(0, 6)
        if busy and age < 120:
            rate = 55 + chance.randint(0, 20)
        batch.outcome("enqueued", rate * 10)
        done = (rate - (3 if busy and age < 120 else 0)) * 10
        batch.outcome("done", done)
        batch.outcome("done", done, lane=DEFAULT_LANE)
        if busy and age % 40 == 0:
            batch.outcome("failed", 2)
            batch.outcome("retried", 2)
        for _ in range(rate * 10):
            wait = chance.lognormvariate(-6.5, 0.6)
            if busy and age < 120:
                wait += (120 - age) * chance.uniform(0.5, 1.5)
            batch.latency("w", wait)  # notifications: their own latency, and their lane's
            batch.latency("w", wait, DEFAULT_LANE)
            run = chance.lognormvariate(-4.2, 0.4)
            batch.latency("e", wait + run)
            batch.topic(TOPIC, wait=wait, run=run)
        for _ in range(rate):  # git pushes: a tenth as many, each a task process
            batch.topic(GIT, wait=chance.lognormvariate(-6, 0.5), run=chance.uniform(0.3, 2.5))
        if busy and age % 40 == 0:
            batch.topic(TOPIC, wait=0.004, run=30.0, failed=True)
            batch.topic(TOPIC, wait=0.004, run=30.0, failed=True)
        if age % 30 == 0:  # a long job now and then, on its lane
            wait = chance.uniform(0.2, 1.0) + (40.0 if busy else 0.0)
            batch.outcome("done", 1)
            batch.outcome("done", 1, lane=LONG_LANE)
            batch.latency("w", wait, LONG_LANE)
            batch.topic(JIRA, wait=wait, run=chance.uniform(60, 190))
        pipe = client.pipeline()
        flush_into(batch, pipe, start)
        depth = 0
        if busy and age < 120:
            depth = (120 - age) * 11 + chance.randint(0, 40)
        pipe.hset(keys.stats_bucket(start), "depth", depth)
        pipe.execute()


def _log_file(directory: Path, *, busy: bool) -> Path:
    lines = []
    for n in range(12):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(FROZEN - 12 + n))
        pid = 4120 + n % 2
        lines.append(
            f"{stamp} [{pid}] [info] [Notification] Start notification artifact "
            f"#{2040 + n} changeset #{90310 + n}"
        )
        if busy and n == 7:
            lines.append(
                f"{stamp} [{pid}] [warning] Message on {TOPIC} failed (try 1 of 3), "
                "retried in 5 s: SMTP relay 10.0.4.2:25 did not answer in time"
            )
        else:
            lines.append(
                f"{stamp} [{pid}] [info] [Notification] End notification artifact "
                f"#{2040 + n} changeset #{90310 + n} (2 mail(s) in 0.0{n % 9 + 1}1 s)"
            )
    path = directory / "worker_log"
    path.write_text("\n".join(lines) + "\n")
    return path


def seed_main(client: redis.Redis, directory: Path) -> Path:
    """A quiet forge: one pool of two idle workers, a steady trickle, nothing wrong."""
    client.flushall()
    _pool(client, "web-1", "web-1", 4101)
    _worker(client, "web-1", 0, "web-1", 4120, done=713, processed=713, cpu=1.0, **LANE_WORKER)
    _worker(client, "web-1", 1, "web-1", 4121, done=698, processed=698, cpu=2.0)
    _history(client, busy=False)
    client.hset(keys.CONFIG, mapping={"async_scope": "all", "version": 1})
    return _log_file(directory, busy=False)


def seed_busy(client: redis.Redis, directory: Path) -> Path:
    """A burst: two pools on two hosts, a deep queue three minutes old, every state."""
    client.flushall()
    _pool(client, "web-1", "web-1", 4101, wanted=4, configured=4, running=4)
    _pool(client, "web-2", "web-2", 8830, wanted=3, configured=2, running=2)
    busy = {"state": "busy", "topic": TOPIC}
    _worker(
        client,
        "web-1",
        0,
        "web-1",
        4120,
        **LANE_WORKER,
        state="busy",
        topic=JIRA,
        task_pid=5210,
        job_started=FROZEN - 131.3,
        done=210,
        processed=42,
        cpu=97.0,
        rss=212_000_000,
    )
    _worker(
        client,
        "web-1",
        1,
        "web-1",
        4121,
        **busy,
        job_started=FROZEN - 0.5,
        done=2187,
        failed=4,
        processed=917,
        cpu=41.0,
    )
    _worker(
        client,
        "web-1",
        2,
        "web-1",
        4133,
        **busy,
        job_started=FROZEN - 12.6,
        done=1954,
        processed=954,
        cpu=3.0,
    )
    _worker(client, "web-1", 3, "web-1", 4140, state="stopping", done=1000, processed=1000)
    _worker(
        client,
        "web-2",
        0,
        "web-2",
        8841,
        **busy,
        job_started=FROZEN - 0.7,
        done=1630,
        failed=2,
        processed=630,
        cpu=35.0,
    )
    _worker(client, "web-2", 1, "web-2", 8842, state="starting", done=0, processed=0, cpu=0.0)
    # What the busy workers hold: the worker screen shows it.
    client.lpush(
        keys.processing_list("web-1/0#4120"), encode(JIRA, {"n": 9}, enqueue_ts=FROZEN - 131.4)
    )
    client.lpush(
        keys.processing_list("web-1/1#4121"),
        encode(TOPIC, {"artifact_id": 2052, "changeset_id": 90322}, enqueue_ts=FROZEN - 0.9),
    )
    dead = _worker(client, "web-2", 2, "web-2", 8790, state="dead")
    client.lpush(keys.processing_list(dead), *[encode(TOPIC, {"n": n}) for n in range(3)])
    waiting = [
        encode(TOPIC, {"artifact_id": n}, enqueue_ts=FROZEN - 185 + n * 0.14) for n in range(1284)
    ]
    client.lpush(keys.QUEUE, *waiting)
    imports = [encode(JIRA, {"n": n}, enqueue_ts=FROZEN - 240 + n * 30) for n in range(3)]
    client.lpush(keys.lane_list(LONG_LANE), *imports)
    client.zadd(keys.DELAYED, {encode(TOPIC, {"n": 1}, queued_total=1): FROZEN + 4})
    _dead_letters(client)
    _history(client, busy=True)
    client.hset(keys.CONFIG, mapping={"async_scope": "all", "version": 3})
    return _log_file(directory, busy=True)


def seed_lanes(client: redis.Redis, directory: Path) -> Path:
    """A Tuleap forge of two workers: a JIRA import runs as Tuleap's task process on its
    lane, two more wait there, and the notifications do not wait behind them."""
    client.flushall()
    _pool(client, "forge", "forge", 2101)
    _worker(
        client,
        "forge",
        0,
        "forge",
        2120,
        **LANE_WORKER,
        state="busy",
        topic=JIRA,
        task_pid=2388,
        job_started=FROZEN - 187.6,
        done=31,
        processed=31,
        cpu=94.0,
        rss=246_000_000,
    )
    _worker(
        client,
        "forge",
        1,
        "forge",
        2121,
        state="busy",
        topic="tuleap.git.hooks.post-receive",
        task_pid=2391,
        job_started=FROZEN - 0.6,
        done=1288,
        processed=288,
        cpu=61.0,
        rss=97_000_000,
    )
    imports = [encode(JIRA, {"n": n}, enqueue_ts=FROZEN - 200 + n * 40) for n in range(2)]
    client.lpush(keys.lane_list(LONG_LANE), *imports)
    _history(client, busy=False)
    client.hset(keys.CONFIG, mapping={"async_scope": "all", "version": 1})
    return _log_file(directory, busy=False)


def seed_config_error(client: redis.Redis, directory: Path) -> Path:
    """The quiet forge after an admin saved a local.inc with a syntax error."""
    log = seed_main(client, directory)
    client.hset(keys.pool("web-1"), "config_error", CONFIG_ERROR)
    return log


def _dead_letters(client: redis.Redis) -> None:
    letters = [
        dead_letter_entry(
            encode(
                TOPIC,
                {"project_id": 101, "artifact_id": 2049, "changeset_id": 90319},
                enqueue_ts=FROZEN - 262.5,
            ),
            "SMTPRecipientsRefused: ghost@example.com: 550 5.1.1 User unknown",
            worker="web-1/1#4121",
            tries=3,
            topic=TOPIC,
            traceback=TRACEBACK,
            now=FROZEN - 240,
        ),
        dead_letter_entry(
            b"{not json",
            "not JSON: Expecting property name enclosed in double quotes at 1",
            worker="web-2/0#8841",
            tries=0,
            topic="",
            now=FROZEN - 3500,
        ),
        dead_letter_entry(
            encode("tuleap.unknown.topic", {"id": 7}, enqueue_ts=FROZEN - 7300.25),
            "no handler for topic 'tuleap.unknown.topic'",
            worker="web-1/0#4120",
            tries=0,
            topic="tuleap.unknown.topic",
            now=FROZEN - 7300,
        ),
    ]
    client.rpush(keys.DEAD_LETTERS, *letters)


def scene_app(directory: Path, log: Path) -> TuitopApp:
    """The UI on the scene's Redis, at the frozen time."""
    config = directory / "local.inc"
    config.write_text(
        f"<?php\n$redis_server = '127.0.0.1';\n$redis_port = {SCENE_PORT};\n"
        "$sys_nb_backend_workers = 2;\n"
    )
    source = SnapshotSource(
        lambda: load_config([str(config)]).settings, [str(config)], clock=lambda: FROZEN
    )
    # A refresh far apart: the picture is the first snapshot's, whatever the test's pace.
    return TuitopApp(source, interval=3600, log=FileTail(str(log)))


async def first_picture(pilot: Pilot[object]) -> None:
    """Waits until the first snapshot is on screen."""
    app = pilot.app
    assert isinstance(app, TuitopApp)
    log = app.query_one(LogPanel)
    for _ in range(200):
        if app.reading is not None and log.lines:
            break
        await pilot.pause(0.05)
    else:
        raise AssertionError("the first picture did not come within 10 s")
    await pilot.pause(0.3)
    # The log follows its end after a refresh of its own: at the end for every picture.
    log.scroll_end(animate=False, immediate=True)
    await pilot.pause(0.1)


async def redis_goes_down(pilot: Pilot[object], server: EmbeddedRedis) -> None:
    """After the first picture, Redis dies and the next refresh says so."""
    app = pilot.app
    assert isinstance(app, TuitopApp)
    server.kill()
    app.refresh_snapshot()
    for _ in range(200):
        if app.reading is not None and app.reading.error:
            break
        await pilot.pause(0.05)
    await pilot.pause(0.2)


async def open_dead_letters(pilot: Pilot[object], server: EmbeddedRedis) -> None:
    """The dead-letter screen, the newest one selected, its table sized to its rows (the
    table measures them when idle: on a loaded machine, after a pause of any length)."""
    await pilot.press("d")
    for _ in range(200):
        screen = pilot.app.screen
        if getattr(screen, "letters", None):
            table = screen.query_one("#letters", DataTable)
            if table.virtual_size.width > 70:  # the reasons measured, not the labels
                break
        await pilot.pause(0.05)
    await pilot.pause(0.2)


async def filter_dead_letters(pilot: Pilot[object], server: EmbeddedRedis) -> None:
    """The dead-letter screen filtered on a word of a reason."""
    await open_dead_letters(pilot, server)
    await pilot.press("slash", *"smtp", "enter")
    await pilot.pause(0.2)


async def open_topics(pilot: Pilot[object], server: EmbeddedRedis) -> None:
    """The topics screen (t)."""
    await pilot.press("t")
    await pilot.pause(0.3)


async def open_worker(pilot: Pilot[object], server: EmbeddedRedis) -> None:
    """The second worker (the one with a warning in the log) up close (enter)."""
    app = pilot.app
    assert isinstance(app, TuitopApp)
    app.query_one(WorkersPanel).focus()
    await pilot.press("down", "enter")
    for _ in range(200):
        screen = app.screen
        if isinstance(screen, WorkerScreen) and screen.held:
            break
        await pilot.pause(0.05)
    await pilot.pause(0.2)


async def sort_by_cpu(pilot: Pilot[object], server: EmbeddedRedis) -> None:
    """s, twice: by state, then by CPU."""
    await pilot.press("s", "s")
    await pilot.pause(0.2)


SMALL = (80, 24)
"""The smallest terminal the UI is made for (a plain SSH session)."""
HUGE = (160, 50)
"""A tall terminal: the topics table joins the main screen."""


@dataclass(frozen=True)
class Scene:
    name: str
    title: str
    seed: Callable[[redis.Redis, Path], Path]
    then: Callable[[Pilot[object], EmbeddedRedis], Awaitable[None]] | None = None
    size: tuple[int, int] = SIZE


SCENES = (
    Scene("main", "A quiet pool", seed_main),
    Scene("busy", "A burst on two hosts: every worker state", seed_busy),
    Scene("lanes", "Lanes: a JIRA import runs, notifications do not wait", seed_lanes),
    Scene("config_error", "A save with a syntax error", seed_config_error),
    Scene("redis_down", "Redis down: said, the last picture kept", seed_main, redis_goes_down),
    Scene("dead_letters", "Dead letters (d)", seed_busy, open_dead_letters),
    Scene("small", "80x24: the numbers and the key columns stay", seed_busy, size=SMALL),
    Scene("small_config_error", "80x24: a config error still shows", seed_config_error, size=SMALL),
    Scene("small_sorted", "80x24, workers by CPU (s s)", seed_busy, sort_by_cpu, size=SMALL),
    Scene("huge", "A tall terminal: the topics table too", seed_busy, size=HUGE),
    Scene("topics", "Topics over 5 minutes (t), 80x24", seed_busy, open_topics, size=SMALL),
    Scene("worker", "One worker up close (enter)", seed_busy, open_worker),
    Scene(
        "small_dead_letters",
        "Dead letters filtered by a reason's word (/), 80x24",
        seed_busy,
        filter_dead_letters,
        size=SMALL,
    ),
)
