"""Helpers of the UI's tests: the terminal sizes, a widget's text, waiting under the
pilot, an app for a config."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from textual.widgets import Static

from tuitop.config import load_config
from tuitop.tui.app import TuitopApp
from tuitop.tui.logtail import FileTail
from tuitop.tui.source import SnapshotSource

SIZE = (130, 44)


def text_of(widget: Static) -> str:
    """What the widget shows, as plain text (a table rendered, too)."""
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(widget.content)
    return console.export_text()


async def until(condition: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


SMALL = (80, 24)


def app_for(config: Path, *, log: Path | None = None, read_only: bool = False) -> TuitopApp:
    """The app as ``tuitop top`` builds it: no pool of its own."""
    source = SnapshotSource(lambda: load_config([str(config)]).settings, [str(config)])
    tail = FileTail(str(log)) if log else None
    return TuitopApp(source, interval=0.2, log=tail, read_only=read_only)
