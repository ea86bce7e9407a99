"""The terminal UI driven with Textual's pilot, against a real Redis and a real pool."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis
from textual.widgets import DataTable, RichLog, Static

from tests.pool import Pool, write_config
from tuitop import keys
from tuitop.config import RedisSettings
from tuitop.message import encode
from tuitop.redisconn import connect
from tuitop.redisserver import EmbeddedRedis
from tuitop.tui.app import TuitopApp
from tuitop.tui.widgets import HeaderBar, seconds


async def until(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


def app_for(server: EmbeddedRedis, log_file: Path | None = None) -> TuitopApp:
    settings = RedisSettings("127.0.0.1", server.port)
    return TuitopApp(
        lambda: connect(settings, socket_timeout=2),
        redis_address=settings.address,
        interval=0.2,
        log_file=str(log_file) if log_file else None,
    )


def test_durations_read_as_an_operator_reads_them() -> None:
    assert [seconds(v) for v in (None, 0.0008, 0.021, 4.2, 180)] == [
        "—",
        "0.8ms",
        "21ms",
        "4.2 s",
        "3 min",
    ]


async def test_panels_show_a_live_pool(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=2)
    pool = Pool(tmp_path, config, "--handlers", "tests.handlers_for_tests").start()
    pools.append(pool)
    redis_client.lpush(keys.QUEUE, *[encode("test.count", {"id": n}) for n in range(30)])
    app = app_for(redis_server, pool.log_file)
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one("#workers", DataTable)
        await until(lambda: table.row_count == 2)
        await until(lambda: "done" in str(app.query_one("#queue-figures", Static).render()))
        header = str(app.query_one(HeaderBar).render())
        assert f"redis 127.0.0.1:{redis_server.port} ✔" in header
        await until(lambda: len(app.query_one("#log", RichLog).lines) > 0)
        # Pause: the picture stops changing.
        await pilot.press("p")
        assert app.paused
        taken = app.snapshot
        await asyncio.sleep(0.6)
        assert app.snapshot is taken
        await pilot.press("p")
        await until(lambda: app.snapshot is not taken)
        # Redis goes away: said in the header, the panels keep their last picture.
        redis_server.kill()
        await until(lambda: "✘" in str(app.query_one(HeaderBar).render()))
        assert table.row_count == 2
        await pilot.press("q")
    redis_server.start()
    assert pool.stop() == 0
