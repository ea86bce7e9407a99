"""SVG snapshots of the UI's screens (pytest-textual-snapshot), drawn from a real Redis
holding a fixed scene and seen at a frozen time (``tests/tui_scenes.py``): the main screen,
a busy pool, lanes with a long task running, a config error, Redis down and the
dead-letter screen; at 80x24 (the numbers and the worker table's key columns stay, a config
error shows, sorted, the topics, the dead letters filtered) and on a tall terminal (the
topics table joins the main screen); one worker up close.

A change to a screen fails here until the new picture is looked at and accepted with
``pytest tests/test_tui_snapshots.py --snapshot-update`` (then ``scripts/screenshots.py``
for the README's copies).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from tests import tui_scenes


@pytest.mark.parametrize("scene", tui_scenes.SCENES, ids=lambda scene: scene.name)
def test_screen(snap_compare: Callable[..., bool], scene: tui_scenes.Scene, tmp_path: Path) -> None:
    with tui_scenes.utc(), tui_scenes.scene_redis(tmp_path) as server:
        client = server.client()
        log = scene.seed(client, tmp_path)
        client.close()
        app = tui_scenes.scene_app(tmp_path, log)

        async def before(pilot: Pilot[object]) -> None:
            await tui_scenes.first_picture(pilot)
            if scene.then is not None:
                await scene.then(pilot, server)

        assert snap_compare(app, terminal_size=scene.size, run_before=before)
