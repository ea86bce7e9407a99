"""The UI's views for any terminal and for an operator's questions, driven with Textual's
pilot against a real Redis and real pools: 80x24 and a tall terminal, the worker table's
columns and sort, one worker up close, the topics, the dead letters filtered and replayed,
and ``tuitop top`` commanding a pool that runs as another process (or refusing to, read-only).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis
from textual.widgets import DataTable, Sparkline, Static

from tests.handlers_for_tests import RUNS_KEY
from tests.pool import Pool, write_config
from tests.tui_pilot import SMALL, app_for, text_of, until
from tuitop.backends.redis import keys
from tuitop.backends.redis.queue import dead_letter_entry
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.message import encode
from tuitop.tui.app import READ_ONLY, TuitopApp
from tuitop.tui.screens import ConfirmScreen, DeadLettersScreen
from tuitop.tui.topics import TopicsPanel, TopicsScreen
from tuitop.tui.widgets import HeaderBar, LogPanel
from tuitop.tui.worker_screen import WorkerScreen
from tuitop.tui.workers import WorkersPanel, columns_for

LARGE = (160, 50)
HANDLERS = ("--handlers", "tests.handlers_for_tests")


def columns(app: TuitopApp) -> list[str]:
    return [column.label for column in app.query_one(WorkersPanel).columns_shown]


def said(app: TuitopApp) -> list[str]:
    return [notification.message for notification in app._notifications]


def beat(client: redis.Redis, pool: str) -> dict[str, str]:
    fields = client.hgetall(keys.pool(pool))
    return {k.decode(): v.decode() for k, v in fields.items()}


def test_columns_drop_by_priority_as_the_table_narrows() -> None:
    full = [column.label for column in columns_for(200)]
    assert full == ["id", "host", "pid", "lane", "state", "done", "failed", "recycle", "cpu", "rss"]
    # 80 columns: the table's room once its border and padding are taken.
    small = columns_for(76)
    assert [c.label for c in small] == ["id", "state", "done", "failed", "cpu", "rss"]
    assert next(c.width for c in small if c.label == "state") >= 22
    assert [c.label for c in columns_for(10)] == ["id", "state"]  # never fewer
    for width in range(45, 200):  # what is chosen fits, scroll bar included
        assert sum(column.width + 2 for column in columns_for(width)) <= width - 2


async def test_80x24_keeps_the_header_the_numbers_and_the_key_columns(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=2)
    pool = Pool(tmp_path, config, *HANDLERS).start()
    pools.append(pool)
    redis_client.lpush(keys.QUEUE, *[encode("test.count", {"id": n}) for n in range(10)])
    app = app_for(config, log=pool.log_file)
    async with app.run_test(size=SMALL) as pilot:
        await until(lambda: app.query_one(WorkersPanel).row_count == 2)
        await pilot.pause(0.3)
        screen = app.screen
        assert screen.has_class("-short") and screen.has_class("-narrow")
        header = app.query_one(HeaderBar)
        assert header.region.y == 0 and header.region.height == 1  # never scrolled away
        assert "✔" in text_of(header)
        assert columns(app) == ["id", "state", "done", "failed", "cpu", "rss"]
        workers = app.query_one(WorkersPanel)
        assert workers.region.bottom <= SMALL[1] - 1  # above the footer, on screen
        assert workers.region.height >= 5  # its header and rows, not squeezed out
        # The charts go, the numbers stay; the config panel shows only an error.
        assert not app.query_one("#depth", Sparkline).display
        assert not app.query_one("#latency-chart", Sparkline).display
        assert app.query_one("#config").region.height == 0
        assert app.query_one(LogPanel).region.height == 3
        assert not app.query_one(TopicsPanel).display
        assert screen.scroll_offset.y == 0

        # Resized to a tall, wide terminal: every column, the charts, the topics.
        await pilot.resize_terminal(*LARGE)
        await until(lambda: len(columns(app)) == 10)
        await pilot.pause(0.2)
        assert app.screen.has_class("-huge") and app.screen.has_class("-wide")
        assert app.query_one("#depth", Sparkline).display
        topics = app.query_one(TopicsPanel)
        assert topics.display
        await until(lambda: "test.count" in text_of(topics))
        assert "p95" in text_of(topics) and "slowest" in text_of(topics)
        await pilot.press("q")


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "160x50"])
async def test_sort_enter_and_topics(
    tmp_path: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    size: tuple[int, int],
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=2)
    pool = Pool(tmp_path, config, *HANDLERS).start()
    pools.append(pool)
    redis_client.lpush(keys.QUEUE, *[encode("test.count", {"id": n}) for n in range(10)])
    redis_client.lpush(keys.QUEUE, encode("test.fail", {"id": "f"}))
    app = app_for(config, log=pool.log_file)
    async with app.run_test(size=size) as pilot:
        panel = app.query_one(WorkersPanel)
        await until(lambda: panel.row_count == 2)
        await until(
            lambda: (
                app.snapshot is not None
                and sum(w.failed for w in app.snapshot.workers) >= 1  # retried later, again
                and sum(w.done for w in app.snapshot.workers) == 10
            )
        )
        # s: by state, then by CPU, by RSS, by done...: the header and the title say it.
        await pilot.press("s")
        assert panel.sort_key.name == "state"
        assert "by state (s)" in str(panel.border_title)
        await pilot.press("s", "s", "s", "s")
        assert panel.sort_key.name == "failed"
        labels = [str(column.label) for column in panel.columns.values()]
        assert "failed ▼" in labels
        # The worker that failed is on top; selected, it stays so through the next re-sort.
        assert panel.shown_workers[0].failed >= 1
        failing = panel.shown_workers[0].id
        panel.move_cursor(row=0)
        await pilot.press("s", "s")  # recycle, then round to "id"
        assert panel.sort_key.name == "id"
        assert panel.selected() is not None and panel.selected().id == failing  # type: ignore[union-attr]

        # A job running: enter shows it, its process tree (this host) and its last errors.
        redis_client.lpush(keys.QUEUE, encode("test.sleep", {"id": "s", "seconds": 30}))
        await until(lambda: any(w.state == "busy" for w in panel.shown_workers))
        busy = next(w for w in panel.shown_workers if w.state == "busy")
        panel.focus()
        panel.move_cursor(row=panel.shown_workers.index(busy))
        await pilot.press("enter")
        await until(lambda: isinstance(app.screen, WorkerScreen))
        screen = app.screen
        assert isinstance(screen, WorkerScreen)
        await until(lambda: screen.held)
        job = text_of(screen.query_one("#worker-job", Static))
        assert "test.sleep" in job and '"seconds":30' in job
        tree = screen.query_one("#worker-tree", DataTable)
        await until(lambda: tree.row_count >= 1)
        assert str(tree.get_row_at(0)[0]) == str(busy.pid)
        assert "tuitop" in str(tree.get_row_at(0)[3])
        # Its errors: the failure, if this worker had it; else the heartbeat's count.
        errors = text_of(screen.query_one("#worker-errors", Static))
        assert "test.fail" in errors or "failure(s) since it started" in errors
        await pilot.press("escape")
        await until(lambda: not isinstance(app.screen, WorkerScreen))

        # t: the topics, their counts and failures.
        await pilot.press("t")
        await until(lambda: isinstance(app.screen, TopicsScreen))
        topics = app.screen.query_one(TopicsPanel)
        await until(lambda: "test.count" in text_of(topics) and "test.fail" in text_of(topics))
        row = next(line for line in text_of(topics).splitlines() if "test.fail" in line)
        cells = row.split()  # topic, n, (/s on a wide terminal), failed, ...
        finished, failed = cells[1], cells[3 if size == LARGE else 2]
        assert finished == failed and int(failed) >= 1  # every try failed
        await pilot.press("escape")
        await pilot.press("q")
    redis_client.delete(RUNS_KEY)


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "160x50"])
async def test_dead_letters_filtered_by_topic_or_reason_and_replayed(
    tmp_path: Path, redis_server: EmbeddedRedis, redis_client: redis.Redis, size: tuple[int, int]
) -> None:
    letters = [
        ("tuleap.tracker.artifact", "SMTPRecipientsRefused: 550 user unknown"),
        ("tuleap.git.hooks.post-receive", "task exited with code 1"),
        ("tuleap.tracker.artifact", "SMTP relay did not answer"),
        ("tuleap.unknown", "no handler for topic 'tuleap.unknown'"),
    ]
    for n, (topic, reason) in enumerate(letters):
        raw = encode(topic, {"n": n})
        entry = dead_letter_entry(raw, reason, worker="w/0#1", tries=3, topic=topic)
        redis_client.lpush(keys.DEAD_LETTERS, entry)
    config = write_config(tmp_path, port=redis_server.port, workers=0)
    app = app_for(config)
    async with app.run_test(size=size) as pilot:
        await until(lambda: app.snapshot is not None and app.snapshot.queue.dead_letters == 4)
        await pilot.press("d")
        await until(lambda: isinstance(app.screen, DeadLettersScreen) and app.screen.letters)
        screen = app.screen
        assert isinstance(screen, DeadLettersScreen)
        # /: by a word of the reason (any case) ...
        await pilot.press("slash", *"smtp")
        await until(lambda: len(screen.letters) == 2)
        title = text_of(screen.query_one("#letters-title", Static))
        assert "filter 'smtp': 2 shown" in title
        # ... or of the topic; enter keeps it and goes back to the list.
        await pilot.press(*("backspace",) * 4, *"git", "enter")
        await until(lambda: len(screen.letters) == 1)
        assert screen.letters[0].topic == "tuleap.git.hooks.post-receive"
        # a: what the filter shows, after a question that says so; n keeps them.
        await pilot.press("a")
        await until(lambda: isinstance(app.screen, ConfirmScreen))
        assert "1 dead letter(s) the filter 'git' shows" in app.screen.question
        await pilot.press("n")
        await until(lambda: app.screen is screen)
        assert redis_client.llen(keys.QUEUE) == 0
        await pilot.press("slash", *("backspace",) * 3, *"tracker", "enter")
        await until(lambda: len(screen.letters) == 2)
        await pilot.press("a")
        await until(lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(lambda: not screen.letters)
        assert redis_client.llen(keys.QUEUE) == 2
        assert redis_client.llen(keys.DEAD_LETTERS) == 2
        assert all(b"tracker.artifact" in raw for raw in redis_client.lrange(keys.QUEUE, 0, -1))
        # escape in the filter clears it (all shown again); escape again: back.
        await pilot.press("slash", "escape")
        await until(lambda: len(screen.letters) == 2)
        assert isinstance(app.screen, DeadLettersScreen)
        await pilot.press("escape")
        await until(lambda: not isinstance(app.screen, DeadLettersScreen))
        await pilot.press("q")


async def test_top_scales_pauses_reloads_and_stops_a_pool_of_another_process(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=2)
    pool = Pool(tmp_path, config, "--pool-name", "alpha", *HANDLERS).start()
    pools.append(pool)
    process = pool.process
    assert process is not None
    # --read-only first: every command refused, nothing sent.
    app = app_for(config, read_only=True)
    async with app.run_test(size=SMALL) as pilot:
        await until(lambda: app.query_one(WorkersPanel).row_count == 2)
        assert "read-only" in text_of(app.query_one(HeaderBar))
        await pilot.press("plus", "minus", "p", "r", "S")
        await pilot.pause(0.2)
        assert sum(READ_ONLY in text for text in said(app)) == 5
        assert not isinstance(app.screen, ConfirmScreen)  # S asked nothing
        await pilot.press("d")
        await until(lambda: isinstance(app.screen, DeadLettersScreen))
        await pilot.press("a", "x")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmScreen)
        assert sum("read-only" in text for text in said(app)) == 7
        await pilot.press("escape", "q")
    assert beat(redis_client, "alpha")["wanted"] == "2"
    assert beat(redis_client, "alpha")["paused"] == "0"

    app = app_for(config)
    async with app.run_test(size=SMALL) as pilot:
        await until(lambda: app.query_one(WorkersPanel).row_count == 2)
        # +: the selected worker's pool, through Redis; its reply is said.
        await pilot.press("plus")
        await until(lambda: any("alpha: workers 2 → 3" in t or "2 → 3" in t for t in said(app)))
        await until(lambda: beat(redis_client, "alpha")["running"] == "3")
        await until(lambda: app.query_one(WorkersPanel).row_count == 3)
        await pilot.press("minus")
        await until(lambda: beat(redis_client, "alpha")["running"] == "2")
        # p: paused (no worker takes), p again: resumed.
        await pilot.press("p")
        await until(lambda: beat(redis_client, "alpha")["paused"] == "1")
        await until(lambda: app.snapshot is not None and app.snapshot.pools[0].paused)
        await until(lambda: "paused: alpha" in str(app.query_one(WorkersPanel).border_title))
        redis_client.lpush(keys.QUEUE, encode("test.count", {"id": "while paused"}))
        await pilot.pause(1.5)
        assert redis_client.llen(keys.QUEUE) == 1  # it waits
        await pilot.press("p")
        await until(lambda: beat(redis_client, "alpha")["paused"] == "0")
        await until(lambda: redis_client.llen(keys.QUEUE) == 0)
        await until(lambda: app.query_one(WorkersPanel).row_count >= 1)
        # r: a reload, said by the pool.
        await pilot.press("r")
        await until(lambda: any("reload" in t for t in said(app)[-3:]))
        # S asks first; n: nothing sent.
        await pilot.press("S")
        await until(lambda: isinstance(app.screen, ConfirmScreen))
        assert "Stop pool alpha" in app.screen.question
        await pilot.press("n")
        await until(lambda: not isinstance(app.screen, ConfirmScreen))
        await pilot.pause(1.5)
        assert process.poll() is None
        # S, y: it stops warm and exits 0.
        await pilot.press("S")
        await until(lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(lambda: process.poll() is not None, timeout=30)
        await pilot.press("q")
    assert process.returncode == 0
    assert os.path.exists(pool.log_file)
    log = Path(pool.log_file).read_text()
    assert "tuitop top" in log  # who asked, in the pool's log
