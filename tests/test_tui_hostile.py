"""The UI and ``top --once`` against a store others wrote to: heartbeats, pools, stats
and dead letters no tuitop wrote, driven through every screen read-only."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import redis

from tests.pool import run_tuitop, write_config
from tests.tui_pilot import SMALL, app_for, until
from tuitop.backends.redis import keys
from tuitop.backends.redis.queue import dead_letter_entry
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.message import encode
from tuitop.stats import STATS_BUCKET_SECONDS, bucket_start
from tuitop.tui.screens import DeadLettersScreen
from tuitop.tui.topics import TopicsScreen
from tuitop.tui.worker_screen import WorkerScreen
from tuitop.tui.workers import WorkersPanel

MARKUP = "[bold red]x[/][/nope]"


def hostile_store(client: redis.Redis) -> None:
    now = time.time()
    host = socket.gethostname()
    worker = f"{MARKUP}/0#{2**40}"
    client.sadd(keys.WORKERS, worker, b"\xff\xfe/1#1", "p/2#1")
    client.hset(
        keys.heartbeat(worker),
        mapping={
            "host": host,
            "pid": str(2**40),
            "state": "busy",
            "topic": MARKUP.encode() + b"\xff",
            "job_started": "1e308",
            "since": "-1",
            "beat": str(now + 10**9),
            "done": str(2**53),
            "failed": "nan",
            "cpu": "1e9",
            "rss": str(2**53),
            "task_pid": "-4",
            "serves": ",,,",
            "max_messages": "1e300",
        },
    )
    client.hset(keys.heartbeat("p/2#1"), mapping={b"state": b"\xff\xfe", b"topic": b"\xc3"})
    client.rpush(keys.processing_list(worker), b"\xff not json", b"{}")
    client.sadd(keys.POOLS, MARKUP)
    client.hset(
        keys.pool(MARKUP),
        mapping={
            "host": host,
            "pid": "1",
            "beat": str(now),
            "wanted": "999999999",
            "running": "-1",
            "config_error": MARKUP,
            "files": MARKUP,
            "loaded_at": "inf",
        },
    )
    bucket = keys.stats_bucket(bucket_start(now) - STATS_BUCKET_SECONDS)
    client.hset(
        bucket,
        mapping={
            "done": str(2**80),
            f"t#n|{MARKUP}": "5",
            f"t#w:10|{MARKUP}": "5",
            "t#n|\xff": "1",
            "depth": str(2**70),
        },
    )
    client.lpush(keys.QUEUE, b"\xff\xfe", encode(MARKUP, {}, enqueue_ts=1e300))
    client.lpush(keys.DEAD_LETTERS, b"\xff\xfe not json", b'{"message": 5}')
    client.lpush(
        keys.DEAD_LETTERS,
        dead_letter_entry(
            encode(MARKUP, {}), MARKUP, worker=MARKUP, tries=2**60, topic=MARKUP, now=1e300
        ),
    )


def contents(client: redis.Redis) -> dict[bytes, bytes | None]:
    """Every key and its serialized value."""
    return {key: client.dump(key) for key in client.scan_iter(count=1000)}  # type: ignore[misc]


async def test_every_screen_survives_a_hostile_store(
    tmp_path: Path, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    hostile_store(redis_client)
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    done = run_tuitop("--config", str(config), "top", "--once", "--json")
    assert done.returncode == 0, done.stderr
    done = run_tuitop("--config", str(config), "top", "--once")
    assert done.returncode == 0, done.stderr
    before = contents(redis_client)
    app = app_for(config, read_only=True)
    async with app.run_test(size=SMALL) as pilot:
        panel = app.query_one(WorkersPanel)
        await until(lambda: panel.row_count >= 1)
        await pilot.pause(0.5)
        for row in range(panel.row_count):
            panel.focus()
            panel.move_cursor(row=row)
            await pilot.press("enter")
            await until(lambda: isinstance(app.screen, WorkerScreen))
            await pilot.pause(0.5)
            await pilot.press("escape")
            await until(lambda: not isinstance(app.screen, WorkerScreen))
        await pilot.press("s", "s", "s", "s", "s", "s", "s")
        await pilot.press("t")
        await until(lambda: isinstance(app.screen, TopicsScreen))
        await pilot.pause(0.5)
        await pilot.press("escape")
        await pilot.press("d")
        await until(lambda: isinstance(app.screen, DeadLettersScreen))
        await pilot.pause(0.5)
        await pilot.press("down", "down", "up")
        await pilot.press("r", "a", "y", "x", "y", "g")
        await pilot.pause(0.3)
        await pilot.press("escape")
        await pilot.press("plus", "minus", "p", "r", "S", "y", "l", "z", "z", "question_mark")
        await pilot.pause(0.5)
        await pilot.press("escape")
        await pilot.press("q")
    assert contents(redis_client) == before  # read-only: not one key changed
