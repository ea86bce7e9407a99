"""The terminal UI driven with Textual's pilot, against a real Redis and real workers:
every panel, every key."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
from textual.widgets import DataTable, Input, Static

from tests.conftest import RedisServerFactory
from tests.handlers_for_tests import RUNS_KEY
from tests.pool import REPO, Pool, write_config
from tests.tui_pilot import SIZE, text_of, until
from tuitop.backends.redis import keys
from tuitop.config import load_config
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.lanes import DEFAULT_LANE, LONG_LANE
from tuitop.message import encode
from tuitop.poolprocess import PoolProcess
from tuitop.tui.app import TuitopApp
from tuitop.tui.logtail import FileTail, LogSource
from tuitop.tui.screens import ConfirmScreen, DeadLettersScreen, HelpScreen
from tuitop.tui.source import SnapshotSource
from tuitop.tui.widgets import (
    ConfigPanel,
    HeaderBar,
    LanesPanel,
    LatencyPanel,
    LogPanel,
    QueuePanel,
    line_level,
    seconds,
)
from tuitop.tui.workers import WorkersPanel


def app_for(
    config: Path, *, log: LogSource | None = None, pool: PoolProcess | None = None
) -> TuitopApp:
    source = SnapshotSource(lambda: load_config([str(config)]).settings, [str(config)])
    return TuitopApp(source, interval=0.2, log=log, pool=pool)


def rows(app: TuitopApp) -> int:
    return app.query_one(WorkersPanel).row_count


def test_durations_read_as_an_operator_reads_them() -> None:
    assert [seconds(v) for v in (None, 0.0008, 0.021, 4.2, 180)] == [
        "—",
        "0.8ms",
        "21ms",
        "4.2 s",
        "3 min",
    ]


def test_a_log_line_without_a_level_takes_its_predecessors() -> None:
    assert line_level("2026-11-28T00:00:00+00:00 [12] [warning] x", "info") == "warning"
    assert line_level("  File 'x.py', line 3", "error") == "error"
    assert line_level("... [critical] disk", "info") == "error"


def test_file_tail_follows_appends_partial_lines_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "worker_log"
    tail = FileTail(str(path))
    assert tail.read_lines() == []  # no file yet
    path.write_text("one\ntw")
    assert tail.read_lines() == ["one"]
    with open(path, "a") as handle:
        handle.write("o\nthree\n")
    assert tail.read_lines() == ["two", "three"]
    path.write_text("new\n")  # rotated: a new, smaller file
    assert tail.read_lines() == ["new"]


def lane_done(app: TuitopApp, lane: str) -> int:
    if app.snapshot is None or lane not in app.snapshot.last_minute.lanes:
        return 0
    return app.snapshot.last_minute.lanes[lane].done


async def test_every_panel_shows_a_live_pool_and_redis_down_is_said(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=2)
    pool = Pool(tmp_path, config, "--handlers", "tests.handlers_for_tests").start()
    pools.append(pool)
    redis_client.lpush(keys.QUEUE, *[encode("test.count", {"id": n}) for n in range(30)])
    app = app_for(config, log=FileTail(str(pool.log_file)))
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: rows(app) == 2)
        await until(lambda: lane_done(app, DEFAULT_LANE) == 30)  # every job, on its lane
        # The Lanes panel: Tuleap's list, and the lane the pool says it serves (its tick).
        await until(lambda: "30" in text_of(app.query_one(LanesPanel)))
        await until(lambda: LONG_LANE in text_of(app.query_one(LanesPanel)))
        assert DEFAULT_LANE in text_of(app.query_one(LanesPanel))
        assert "done" in text_of(app.query_one("#queue-figures", Static))
        assert f"redis 127.0.0.1:{redis_server.port} ✔" in text_of(app.query_one(HeaderBar))
        await until(lambda: "workers 2/2" in text_of(app.query_one(ConfigPanel)))
        config_text = text_of(app.query_one(ConfigPanel))
        assert str(config) in config_text
        assert "async" in config_text and "log debug" in config_text
        assert app.query_one(WorkersPanel).border_title == "Workers 2 running / 2 wanted"
        assert app.query_one(LatencyPanel).border_title == "Notification latency"
        await until(lambda: len(app.query_one(LogPanel).lines) > 0)
        assert app.query_one(QueuePanel).border_subtitle == "depth, last 5 min"

        # z: the picture stops changing, and the header says so.
        await pilot.press("z")
        assert app.paused and "FROZEN" in text_of(app.query_one(HeaderBar))
        taken = app.snapshot
        await asyncio.sleep(0.6)
        assert app.snapshot is taken
        await pilot.press("z")
        await until(lambda: app.snapshot is not taken)

        # Redis goes away: said in the header, the panels keep their last picture, dimmed.
        redis_server.kill()
        await until(lambda: "✘" in text_of(app.query_one(HeaderBar)))
        assert "unreachable" in text_of(app.query_one(HeaderBar))
        assert rows(app) == 2
        assert app.query_one(WorkersPanel).has_class("stale")
        # It comes back: so does the picture.
        redis_server.start()
        await until(lambda: "✔" in text_of(app.query_one(HeaderBar)), timeout=30)
        assert not app.query_one(WorkersPanel).has_class("stale")
        await pilot.press("q")
    assert app.return_value == 0
    assert pool.stop() == 0


async def test_the_ui_runs_the_pool_scales_it_and_stops_it_warm(
    tmp_path: Path,
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    config = write_config(tmp_path, port=redis_server.port, workers=2)
    pool = PoolProcess(
        [
            *("--config", str(config), "--log-file", str(tmp_path / "worker_log")),
            *("--handlers", "tests.handlers_for_tests", "--pool-name", "ui"),
        ]
    ).start()
    app = app_for(config, log=pool, pool=pool)
    try:
        async with app.run_test(size=SIZE) as pilot:
            panel = app.query_one(ConfigPanel)
            await until(lambda: rows(app) == 2)
            assert f"pool pid {pool.pid}" in text_of(app.query_one(HeaderBar))
            # +: one more worker for this session; the config panel says the files differ.
            await pilot.press("plus")
            await until(lambda: rows(app) == 3)
            assert "workers 3/3 (files say 2" in text_of(panel)
            await pilot.press("minus", "minus")
            await until(lambda: rows(app) == 1 and "workers 1/1" in text_of(panel))
            # A save of the config file: its count wins again.
            write_config(tmp_path, port=redis_server.port, workers=2)
            await until(lambda: rows(app) == 2 and "workers 2/2  " in text_of(panel))
            # The pool's own log lines reach the log panel.
            await until(
                lambda: any(
                    "for this session" in line.text for line in app.query_one(LogPanel).lines
                )
            )
            # q with a job running: the app ends when the pool has, after the job.
            redis_client.lpush(keys.QUEUE, encode("test.slow", {"id": "s", "seconds": 1.5}))
            await until(lambda: redis_client.lrange(RUNS_KEY, 0, -1) == [b"start:s"])
            await pilot.press("q")
            await until(lambda: "stopping" in text_of(app.query_one(HeaderBar)))
            await until(lambda: app.return_value is not None or not app.is_running, timeout=30)
    finally:
        if pool.returncode is None:
            pool.stop()
            pool.stop()
        pool.wait(30)
    assert app.return_value == 0 and pool.returncode == 0
    assert redis_client.lrange(RUNS_KEY, 0, -1) == [b"start:s", b"end:s"]
    assert redis_client.llen(keys.QUEUE) == 0


async def test_the_dead_letter_screen_masks_the_passwords_as_the_log_does(
    tmp_path: Path, redis_server_factory: RedisServerFactory
) -> None:
    """A dead letter's message, reason or traceback may hold a password in force: the
    screen masks it, as the log and `tuitop dead-letters` do (issue 22)."""
    from tuitop.backends.redis.queue import dead_letter_entry

    password = "s3cret-redis-password-of-thirty-chars"
    server = redis_server_factory(password=password)
    client = server.client()
    raw = encode("t.x", {"token": password})
    entry = dead_letter_entry(
        raw, f"refused {password}", worker="w/0#1", tries=0, topic="t.x",
        traceback=f"Traceback: {password}",
    )  # fmt: skip
    client.lpush(keys.DEAD_LETTERS, entry)
    client.close()
    config = write_config(tmp_path, port=server.port, workers=0, password=password)
    app = app_for(config)
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: app.snapshot is not None and app.snapshot.queue.dead_letters == 1)
        await pilot.press("d")
        await until(lambda: isinstance(app.screen, DeadLettersScreen) and app.screen.letters)
        screen = app.screen
        detail = text_of(screen.query_one("#letter-detail", Static))
        assert "refused ***" in detail and "Traceback: ***" in detail
        assert password not in detail
        table = screen.query_one("#letters", DataTable)
        assert password not in str(table.get_row_at(0))
        await pilot.press("escape")


async def test_dead_letter_screen_inspects_replays_and_purges(
    tmp_path: Path, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    from tuitop.backends.redis.queue import Queue, dead_letter_entry

    queue = Queue(redis_client)
    for n in range(3):
        raw = encode("tuleap.unknown", {"n": n})
        entry = dead_letter_entry(raw, f"no handler #{n}", worker="w/0#1", tries=0, topic="x")
        redis_client.lpush(keys.DEAD_LETTERS, entry)
    config = write_config(tmp_path, port=redis_server.port, workers=0)
    app = app_for(config)
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: app.snapshot is not None and app.snapshot.queue.dead_letters == 3)
        await pilot.press("d")
        await until(lambda: isinstance(app.screen, DeadLettersScreen) and app.screen.letters)
        screen = app.screen
        assert isinstance(screen, DeadLettersScreen)
        detail = text_of(screen.query_one("#letter-detail", Static))
        assert "no handler #2" in detail and '"n": 2' in detail  # newest first
        # The mouse: a click on the third row shows that one.
        await pilot.click("#letters", offset=(4, 3))
        await until(lambda: "no handler #0" in text_of(screen.query_one("#letter-detail", Static)))
        await pilot.click("#letters", offset=(4, 1))
        await until(lambda: "no handler #2" in text_of(screen.query_one("#letter-detail", Static)))
        # Down to the second, r: that one is back on the queue.
        await pilot.press("down", "r")
        await until(lambda: len(screen.letters) == 2)
        assert redis_client.llen(keys.QUEUE) == 1
        assert b'"n":1' in redis_client.lindex(keys.QUEUE, 0)
        # x asks first; n keeps them.
        await pilot.press("x")
        await until(lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await until(lambda: app.screen is screen)
        assert redis_client.llen(keys.DEAD_LETTERS) == 2
        # a, y: all replayed.
        await pilot.press("a")
        await until(lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(lambda: not screen.letters)
        assert redis_client.llen(keys.QUEUE) == 3
        # Back to dead letters to purge: x, y.
        for _ in range(2):
            queue.redis.lpush(
                keys.DEAD_LETTERS,
                dead_letter_entry(b"{bad", "not JSON", worker="w", tries=0, topic=""),
            )
        await pilot.press("g")
        await until(lambda: len(screen.letters) == 2)
        await pilot.press("x")
        await until(lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(lambda: not screen.letters)
        assert redis_client.llen(keys.DEAD_LETTERS) == 0
        await pilot.press("escape")
        await until(lambda: not isinstance(app.screen, DeadLettersScreen))
        await pilot.press("q")


async def test_filter_log_level_help_and_a_config_error(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=3)
    pool = Pool(tmp_path, config).start()
    pools.append(pool)
    app = app_for(config, log=FileTail(str(pool.log_file)))
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: rows(app) == 3)
        # /: the rows narrow as one types; escape clears the filter.
        await pilot.press("slash")
        assert app.query_one("#filter", Input).has_focus
        await pilot.press(*"/1#")
        await until(lambda: rows(app) == 1)
        assert "filter '/1#': 1 shown" in str(app.query_one(WorkersPanel).border_title)
        await pilot.press("escape")
        await until(lambda: rows(app) == 3)
        # l: the log panel shows info and above, then warning and above.
        log = app.query_one(LogPanel)
        await until(lambda: any("[debug]" in line.text for line in log.lines))
        await pilot.press("l")
        assert log.min_level == "info"
        assert not any("[debug]" in line.text for line in log.lines)
        await pilot.press("l", "l", "l")
        assert log.min_level == "debug"
        # ?: the help lists the keys; escape closes it.
        await pilot.press("question_mark")
        await until(lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")
        await until(lambda: not isinstance(app.screen, HelpScreen))
        # A save with a syntax error: in plain sight in the config panel; the pool runs on.
        config.write_text("<?php\n$sys_nb_backend_workers = 2\n")
        panel = app.query_one(ConfigPanel)
        await until(lambda: panel.has_class("problem"))
        assert "local.inc:" in text_of(panel) and "the config above stays" in text_of(panel)
        assert rows(app) == 3
        # + in a view that runs no pool: the selected worker's pool is told through Redis.
        await pilot.press("plus")

        def said() -> list[str]:
            return [notification.message for notification in app._notifications]

        await until(lambda: any("workers 3 → 4 for this session" in text for text in said()))
        await until(lambda: rows(app) == 4)
        await pilot.press("q")
    assert pool.stop() == 0


async def test_redis_not_configured_is_said_plainly(tmp_path: Path) -> None:
    config = tmp_path / "local.inc"
    config.write_text("<?php\n$sys_nb_backend_workers = 2;\n")
    app = app_for(config)
    async with app.run_test(size=SIZE) as pilot:
        header = app.query_one(HeaderBar)
        await until(lambda: "✘" in text_of(header))
        assert "Redis is not configured ($redis_server is empty)" in text_of(header)
        assert app.snapshot is None and rows(app) == 0
        await pilot.press("q")


def test_the_lanes_panel_says_where_every_other_topic_goes() -> None:
    from tuitop.snapshot import PoolView, QueueView, Snapshot
    from tuitop.stats import Percentiles, WindowStats
    from tuitop.tui.widgets import _lane_topics

    def topics(*specs: str) -> dict[str, str]:
        none = Percentiles(0, None, None, None, None)
        window = WindowStats(60, {}, none, none)
        pools = tuple(
            PoolView(name=f"p{n}", host="h", pid=1, wanted=2, lanes=spec)
            for n, spec in enumerate(specs)
        )
        queue = QueueView(0, 0, 0, 0, None, None)
        return _lane_topics(Snapshot(0.0, queue, (), pools, window, window, window))

    assert topics("")[DEFAULT_LANE] == "every other topic"
    bulk = topics("latency_10s: tuleap.tracker.artifact; latency_5m(1): *")
    assert bulk == {DEFAULT_LANE: "tuleap.tracker.artifact", "latency_5m": "every other topic"}
    # Two pools: the first that names a lane says what it holds.
    two = topics("latency_10s: a; x(1): b", "latency_10s: c; x(1): d")
    assert two == {DEFAULT_LANE: "a, every other topic", "x": "b"}


async def test_the_ui_goes_on_past_a_pool_hash_with_times_out_of_range(
    tmp_path: Path, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    redis_client.sadd(keys.POOLS, "evil")
    redis_client.hset(keys.pool("evil"), mapping={"loaded_at": "1e300", "host": "x"})
    app = app_for(config)
    async with app.run_test(size=SIZE):
        await until(lambda: "evil@x" in text_of(app.query_one(ConfigPanel)))
        assert app.is_running and app.return_code is None


async def test_markup_written_by_anyone_is_shown_as_text_everywhere(
    tmp_path: Path, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """Names, topics and reasons come from Redis; a str given to Rich or Textual is read as
    markup, and "[/x]" ends the app with a MarkupError."""
    from tuitop.backends.redis.queue import dead_letter_entry

    config = write_config(tmp_path, port=redis_server.port, workers=0)
    mark = "[/x]"
    redis_client.sadd(keys.POOLS, mark)
    redis_client.hset(keys.pool(mark), mapping={"host": mark, "lanes": mark, "served": mark})
    redis_client.sadd(keys.WORKERS, f"{mark}/0#1")
    redis_client.hset(
        keys.heartbeat(f"{mark}/0#1"),
        mapping={"host": mark, "state": "busy", "topic": mark, "lane": mark, "pool": mark},
    )
    redis_client.zadd(keys.LANES, {mark: 1})
    raw = encode(mark, {"n": 1})
    entry = dead_letter_entry(raw, f"unknown topic '{mark}'", worker="w/0#1", tries=0, topic=mark)
    redis_client.lpush(keys.DEAD_LETTERS, entry)
    app = app_for(config)
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: app.snapshot is not None and app.snapshot.queue.dead_letters == 1)
        await until(lambda: mark in text_of(app.query_one(ConfigPanel)))
        await pilot.press("d")
        await pilot.pause(1.0)
        assert app.is_running and isinstance(app.screen, DeadLettersScreen)
        await pilot.press("escape")
        await pilot.press("plus")
        await pilot.pause(0.5)
        assert app.is_running
