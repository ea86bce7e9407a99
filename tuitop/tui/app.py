"""The Textual application: panels refreshed from snapshots taken off the UI thread.

This first version is the viewer (``tuitop top``): it attaches to a Redis and shows every
pool sharing it. Each refresh takes one :func:`~tuitop.snapshot.take_snapshot` in a thread
worker and posts it to the UI; a Redis that does not answer is said in the header, and the
panels keep their last picture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import redis
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Footer, RichLog

from tuitop.snapshot import Snapshot, take_snapshot
from tuitop.tui.widgets import HeaderBar, LatencyPanel, QueuePanel, WorkersPanel

LOG_TAIL_BYTES = 64 * 1024


class TuitopApp(App[None]):
    """Shows the queue, the workers and the latency, live."""

    CSS_PATH = "tuitop.tcss"
    TITLE = "tuitop"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "toggle_pause", "pause"),
        Binding("q", "quit", "quit"),
    ]

    @dataclass
    class SnapshotTaken(Message):
        snapshot: Snapshot | None
        error: str

    def __init__(
        self,
        client: Callable[[], redis.Redis],
        *,
        redis_address: str,
        interval: float = 0.5,
        log_file: str | None = None,
        describe_error: Callable[[BaseException], str] = str,
    ) -> None:
        super().__init__()
        self._client_factory = client
        self._client: redis.Redis | None = None
        self.redis_address = redis_address
        self.interval = interval
        self.log_file = Path(log_file) if log_file else None
        self._log_offset = 0
        self._describe_error = describe_error
        self.paused = False
        self.snapshot: Snapshot | None = None

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        with Horizontal(id="top"):
            yield QueuePanel()
            yield LatencyPanel()
        yield WorkersPanel()
        log = RichLog(id="log", classes="panel", max_lines=500, wrap=False)
        log.border_title = "Log"
        yield log
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_snapshot()
        self.set_interval(self.interval, self.refresh_snapshot)

    def refresh_snapshot(self) -> None:
        if not self.paused:
            self._take_snapshot()

    @work(thread=True, exclusive=True, group="snapshot")
    def _take_snapshot(self) -> None:
        try:
            if self._client is None:
                self._client = self._client_factory()
            snapshot = take_snapshot(self._client)
        except redis.RedisError as error:
            self._client = None
            self.post_message(self.SnapshotTaken(None, self._describe_error(error)))
            return
        self.post_message(self.SnapshotTaken(snapshot, ""))

    def on_tuitop_app_snapshot_taken(self, message: SnapshotTaken) -> None:
        header = self.query_one(HeaderBar)
        if message.snapshot is None:
            header.show(self.snapshot, self.redis_address, message.error)
            return
        self.snapshot = message.snapshot
        header.show(message.snapshot, self.redis_address, "")
        self.query_one(QueuePanel).show(message.snapshot)
        self.query_one(LatencyPanel).show(message.snapshot)
        self.query_one(WorkersPanel).show(message.snapshot)
        self._tail_log()

    def _tail_log(self) -> None:
        if self.log_file is None or not self.log_file.exists():
            return
        size = self.log_file.stat().st_size
        if size < self._log_offset:
            self._log_offset = 0  # rotated
        start = max(self._log_offset, size - LOG_TAIL_BYTES)
        with open(self.log_file, "rb") as handle:
            handle.seek(start)
            chunk = handle.read(size - start)
        self._log_offset = size
        log = self.query_one("#log", RichLog)
        for line in chunk.decode("utf-8", "replace").splitlines():
            log.write(line)

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        self.sub_title = "paused" if self.paused else ""
        self.notify("updates paused" if self.paused else "updates resumed")
