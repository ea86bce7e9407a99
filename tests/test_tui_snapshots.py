"""SVG snapshots of the UI's screens (pytest-textual-snapshot), drawn from a real Redis
holding a fixed scene and seen at a frozen time (``tests/tui_scenes.py``).

A change to a screen fails here until the new picture is looked at and accepted with
``pytest tests/test_tui_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from textual.pilot import Pilot

from tests import tui_scenes
from tuitop.redisserver import EmbeddedRedis
from tuitop.tui.app import TuitopApp

Compare = Callable[..., bool]


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, redis.Redis]]:
    tui_scenes.use_utc()
    with tui_scenes.scene_redis(tmp_path) as server:
        client = server.client()
        yield server, client
        client.close()


def _compare(snap_compare: Compare, app: TuitopApp, run_before: Any = None) -> None:
    async def before(pilot: Pilot[object]) -> None:
        await tui_scenes.first_picture(pilot)
        if run_before is not None:
            await run_before(pilot)

    assert snap_compare(app, terminal_size=tui_scenes.SIZE, run_before=before)


def test_main_screen(snap_compare: Compare, scene: Any, tmp_path: Path) -> None:
    _, client = scene
    log = tui_scenes.seed_main(client, tmp_path)
    _compare(snap_compare, tui_scenes.scene_app(tmp_path, log))


def test_busy_pool(snap_compare: Compare, scene: Any, tmp_path: Path) -> None:
    _, client = scene
    log = tui_scenes.seed_busy(client, tmp_path)
    _compare(snap_compare, tui_scenes.scene_app(tmp_path, log))


def test_config_error(snap_compare: Compare, scene: Any, tmp_path: Path) -> None:
    _, client = scene
    log = tui_scenes.seed_config_error(client, tmp_path)
    _compare(snap_compare, tui_scenes.scene_app(tmp_path, log))


def test_redis_down(snap_compare: Compare, scene: Any, tmp_path: Path) -> None:
    server, client = scene
    log = tui_scenes.seed_main(client, tmp_path)
    app = tui_scenes.scene_app(tmp_path, log)

    async def kill_redis(pilot: Pilot[object]) -> None:
        server.kill()
        app.refresh_snapshot()
        for _ in range(200):
            if app.reading is not None and app.reading.error:
                break
            await pilot.pause(0.05)
        await pilot.pause()

    _compare(snap_compare, app, kill_redis)


def test_dead_letter_screen(snap_compare: Compare, scene: Any, tmp_path: Path) -> None:
    _, client = scene
    log = tui_scenes.seed_busy(client, tmp_path)
    app = tui_scenes.scene_app(tmp_path, log)

    async def open_dead_letters(pilot: Pilot[object]) -> None:
        await pilot.press("d")
        for _ in range(200):
            screen = app.screen
            if getattr(screen, "letters", None):
                break
            await pilot.pause(0.05)
        await pilot.pause()

    _compare(snap_compare, app, open_dead_letters)
