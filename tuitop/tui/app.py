"""The Textual application: panels refreshed from snapshots taken off the UI thread.

The app only reads: each refresh takes one snapshot (:class:`~tuitop.tui.source.SnapshotSource`,
two round trips whatever the queue length) in a thread worker and posts it to the UI; a
Redis that does not answer is said in the header and the panels keep their last picture,
dimmed. The writes an operator asks for are explicit: ``+``/``-`` signal the pool this UI
runs (``pool``), the dead-letter screen replays and purges.

The same app is ``tuitop`` (with the pool behind it), ``tuitop demo`` and ``tuitop top``
(pools elsewhere, no ``pool``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.css.query import NoMatches
from textual.message import Message
from textual.widgets import Footer, Input

from tuitop.poolprocess import PoolProcess
from tuitop.snapshot import Snapshot
from tuitop.tui.logtail import LogSource
from tuitop.tui.screens import DeadLettersScreen, HelpScreen
from tuitop.tui.source import Reading, SnapshotSource
from tuitop.tui.widgets import (
    ConfigPanel,
    HeaderBar,
    LanesPanel,
    LatencyPanel,
    LogPanel,
    QueuePanel,
    WorkersPanel,
)


class TuitopApp(App[int]):
    """Shows the queue, the workers, the latency, the config and the log, live. Its
    return value is the exit code of the pool it ran (0 without one)."""

    CSS_PATH = "tuitop.tcss"
    TITLE = "tuitop"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "toggle_pause", "pause"),
        Binding("plus", "more_workers", "+worker"),
        Binding("minus", "fewer_workers", "-worker"),
        Binding("d", "dead_letters", "dead letters"),
        Binding("slash", "filter", "filter"),
        Binding("l", "log_level", "log level"),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),
    ]

    @dataclass
    class SnapshotTaken(Message):
        reading: Reading

    def __init__(
        self,
        source: SnapshotSource,
        *,
        interval: float = 0.5,
        log: LogSource | None = None,
        pool: PoolProcess | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        """``on_stop`` runs when the operator first asks to quit, before the pool is told
        to stop (the demo stops its producer there, so the queue is not fed meanwhile)."""
        super().__init__()
        self.source = source
        self.interval = interval
        self.log_source = log
        self.pool = pool
        self.on_stop = on_stop
        self.paused = False
        self.snapshot: Snapshot | None = None
        self.reading: Reading | None = None
        self.stopping = False
        self._taking = False
        """A snapshot is being taken: the next refresh is skipped rather than queued behind
        it (a slow Redis must not pile up threads that quitting would wait for)."""
        self._pool_code: int | None = None

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        with Horizontal(id="top"):
            yield QueuePanel()
            yield LatencyPanel()
        yield LanesPanel()
        yield ConfigPanel()
        yield WorkersPanel()
        yield LogPanel()
        yield Input(placeholder="filter workers: id, host, state or pid", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_snapshot()
        self.set_interval(self.interval, self.refresh_snapshot)

    # --- refresh ---------------------------------------------------------------------------

    def refresh_snapshot(self) -> None:
        if self.pool is not None:
            self._watch_pool()
        if not self.paused and not self._taking:
            self._taking = True
            self._take_snapshot()

    @work(thread=True, group="snapshot")
    def _take_snapshot(self) -> None:
        try:
            reading = self.source.take()
        except Exception as error:  # a bug must not end the UI (and with it the pool)
            address = self.source.redis_settings.address
            reading = Reading(None, address, f"unexpected: {self.source.describe(error)}")
        self.post_message(self.SnapshotTaken(reading))

    def on_tuitop_app_snapshot_taken(self, message: SnapshotTaken) -> None:
        self._taking = False
        if self.paused:
            return
        try:
            self._show_reading(message)
        except NoMatches:
            # A reading posted from its thread as the app closes: the panels are gone.
            return

    def _show_reading(self, message: SnapshotTaken) -> None:
        reading = self.reading = message.reading
        if reading.snapshot is not None:
            self.snapshot = reading.snapshot
            self.query_one(QueuePanel).show(reading.snapshot)
            self.query_one(LatencyPanel).show(reading.snapshot)
            self.query_one(LanesPanel).show(reading.snapshot)
            self.query_one(ConfigPanel).show(reading.snapshot)
            self.query_one(WorkersPanel).show(reading.snapshot)
        for panel in self.query(".panel"):
            panel.set_class(reading.snapshot is None, "stale")
        self._show_header()
        if self.log_source is not None:
            self.query_one(LogPanel).add_lines(self.log_source.read_lines())

    def _show_header(self) -> None:
        reading = self.reading
        self.query_one(HeaderBar).show(
            redis_address=reading.redis_address if reading else self.source.redis_settings.address,
            error=reading.error if reading else "",
            taken_at=self.snapshot.taken_at if self.snapshot else None,
            paused=self.paused,
            pool_state=self._pool_state(),
        )

    def _pool_state(self) -> str:
        if self.pool is None:
            return ""
        code = self.pool.returncode
        if code is not None:
            return f"pool exited with code {code} (see the log; q quits)"
        if self.pool.stop_requests == 1:
            return "stopping: running jobs finish (q again: at once)"
        if self.pool.stop_requests > 1:
            return "stopping at once"
        return f"pool pid {self.pool.pid}"

    def _watch_pool(self) -> None:
        assert self.pool is not None
        code = self.pool.returncode
        if code != self._pool_code:  # said even while paused
            self._pool_code = code
            self._show_header()
        if self.stopping and code is not None:
            if self.log_source is not None:
                self.query_one(LogPanel).add_lines(self.log_source.read_lines())
            self.exit(self.pool.returncode)

    # --- keys ------------------------------------------------------------------------------

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        self._show_header()
        if not self.paused:
            self.refresh_snapshot()

    def _scale(self, more: bool) -> None:
        if self.pool is None:
            pools = self.snapshot.pools if self.snapshot else ()
            signal = "TTIN" if more else "TTOU"
            where = "; ".join(f"on {p.host}: kill -{signal} {p.pid}" for p in pools)
            self.notify(
                "This view runs no pool. " + (where or "Start one with 'tuitop'."),
                title="+/- workers",
                severity="warning",
                markup=False,  # host names come from Redis: anyone may write them
            )
            return
        if self.stopping:
            self.notify("the pool is stopping", severity="warning")
            return
        asked = self.pool.more_workers() if more else self.pool.fewer_workers()
        if not asked:
            self.notify("the pool is not running", severity="error")
            return
        self.notify(
            f"{'one more' if more else 'one fewer'} worker for this session; "
            "$sys_nb_backend_workers wins again at the next save of the config files",
            title="+/- workers",
        )

    def action_more_workers(self) -> None:
        self._scale(more=True)

    def action_fewer_workers(self) -> None:
        self._scale(more=False)

    def action_dead_letters(self) -> None:
        self.push_screen(DeadLettersScreen(self.source))

    def action_filter(self) -> None:
        field = self.query_one("#filter", Input)
        field.add_class("shown")
        field.focus()

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        workers = self.query_one(WorkersPanel)
        workers.filter = event.value.strip()
        if self.snapshot is not None:
            workers.show(self.snapshot)

    @on(Input.Submitted, "#filter")
    def filter_done(self) -> None:
        field = self.query_one("#filter", Input)
        field.remove_class("shown")
        self.query_one(WorkersPanel).focus()

    def on_key(self, event: object) -> None:
        key = getattr(event, "key", "")
        field = self.query_one("#filter", Input)
        if key == "escape" and field.has_focus:
            field.value = ""  # Changed clears the filter
            self.filter_done()

    def action_log_level(self) -> None:
        level = self.query_one(LogPanel).next_level()
        self.notify(f"log panel: {level} and above" if level != "debug" else "log panel: all")

    def action_help(self) -> None:
        main = self._keys_of(self.BINDINGS)
        letters = self._keys_of(DeadLettersScreen.BINDINGS)
        sections = [
            ("Main screen", main),
            ("Dead letters (d)", letters),
            ("Worker filter (/)", [("enter", "keep the filter"), ("escape", "clear it")]),
        ]
        self.push_screen(HelpScreen(sections))

    def _keys_of(self, bindings: list[BindingType]) -> list[tuple[str, str]]:
        shown = [b for b in bindings if isinstance(b, Binding) and b.show]
        return [(self.get_key_display(b), b.description) for b in shown]

    async def action_quit(self) -> None:
        """Without a pool: quit. With one: a warm stop, the app ends when the pool has
        (a second q: a cold stop)."""
        if self.pool is None or self.pool.returncode is not None:
            self.exit(self.pool.returncode if self.pool else 0)
            return
        if not self.stopping and self.on_stop is not None:
            self.on_stop()
        self.stopping = True
        self.pool.stop()
        self._show_header()
        if self.pool.stop_requests == 1:
            self.notify(
                "stopping: the workers finish their jobs (q again: stop at once)", timeout=30
            )


def run_with_pool(
    argv: Sequence[str],
    source: SnapshotSource,
    interval: float,
    on_stop: Callable[[], None] | None = None,
) -> int:
    """Runs the pool (``tuitop ARGV --no-ui``) as a child with the UI in front; returns the
    exit code: the pool's, or 1 when the UI itself failed. Whatever ends the UI, the pool
    is stopped warm and waited for."""
    pool = PoolProcess(argv).start()
    app = TuitopApp(source, interval=interval, log=pool, pool=pool, on_stop=on_stop)
    try:
        app.run()
    finally:
        if pool.returncode is None and pool.stop_requests == 0:  # the UI failed
            print("tuitop: stopping the pool (its running jobs finish)…", file=sys.stderr)
            pool.stop()
        code = pool.wait()
        source.close()
    if app.return_code not in (0, None):
        return app.return_code
    return code if code is not None else 0
