"""The Textual application: panels refreshed from snapshots taken off the UI thread.

The app only reads: each refresh takes one snapshot
(:class:`~tuitop.tui.source.SnapshotSource`, a fixed number of round trips whatever the
queue length) in a thread worker and posts it to the UI; a store that does not answer is
said in the header and the panels keep their last picture, dimmed. The writes an operator
asks for are explicit: ``+``/``-`` signal the pool this UI runs (``pool``), or command the
selected worker's pool through the store when it runs none (:mod:`tuitop.tui.remote`), as
``p`` (pause/resume), ``r`` (reload) and ``S`` (warm stop) always do; the dead-letter
screen replays and purges. ``read_only`` refuses all of these.

The layout follows the terminal (``HORIZONTAL_BREAKPOINTS``/``VERTICAL_BREAKPOINTS`` set a
class on the screen, the .tcss says what each changes): at 80x24 the charts and the config
go (a config error stays), the log keeps a line, the worker table keeps its most useful
columns (:func:`~tuitop.tui.workers.columns_for`); the header and the footer are docked.

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
from textual.widgets import DataTable, Footer, Input

from tuitop import control
from tuitop.poolprocess import PoolProcess
from tuitop.snapshot import PoolView, Snapshot
from tuitop.tui import remote
from tuitop.tui.logtail import LogSource
from tuitop.tui.screens import ConfirmScreen, DeadLettersScreen, HelpScreen
from tuitop.tui.source import Reading, SnapshotSource
from tuitop.tui.topics import TopicsPanel, TopicsScreen
from tuitop.tui.widgets import (
    ConfigPanel,
    HeaderBar,
    LanesPanel,
    LatencyPanel,
    LogPanel,
    QueuePanel,
)
from tuitop.tui.worker_screen import WorkerScreen
from tuitop.tui.workers import WorkersPanel

READ_ONLY = "read-only view (--read-only): it sends no command and changes nothing"


class TuitopApp(App[int]):
    """Shows the queue, the workers, the latency, the config and the log, live. Its
    return value is the exit code of the pool it ran (0 without one)."""

    CSS_PATH = "tuitop.tcss"
    TITLE = "tuitop"
    ENABLE_COMMAND_PALETTE = False
    """Its ctrl+p would take the footer's last room at 80 columns; ? lists every key."""
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("plus", "more_workers", "worker"),
        Binding("minus", "fewer_workers", "worker"),
        Binding("p", "pause_pool", "pause"),
        Binding("r", "reload_pool", "reload", show=False),
        Binding("S", "stop_pool", "stop pool", show=False),
        Binding("s", "sort", "sort"),
        Binding("enter", "worker", "worker", show=False),
        Binding("t", "topics", "topics"),
        Binding("d", "dead_letters", "dead"),
        Binding("slash", "filter", "filter", show=False),
        Binding("l", "log_level", "log level", show=False),
        Binding("z", "toggle_pause", "freeze", show=False),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),
    ]
    """The footer shows the keys used most (it has 80 columns at worst); ``?`` lists all."""
    # Textual declares these ``ClassVar[...] | None``, which mypy reads as instance
    # variables: a ClassVar here would not type-check.
    HORIZONTAL_BREAKPOINTS = [  # noqa: RUF012
        (0, "-narrow"),
        (110, "-wide"),
    ]
    VERTICAL_BREAKPOINTS = [  # noqa: RUF012
        (0, "-short"),
        (32, "-tall"),
        (48, "-huge"),
    ]
    """Short: no charts, no config panel (its error excepted), a one-line log. Huge: the
    topics panel on the main screen too."""

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
        read_only: bool = False,
    ) -> None:
        """``on_stop`` runs when the operator first asks to quit, before the pool is told
        to stop (the demo stops its producer there, so the queue is not fed meanwhile).
        ``read_only``: every key that would change something (a pool, the dead letters)
        is refused with a message."""
        super().__init__()
        self.read_only = read_only
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
        it (a slow store must not pile up threads that quitting would wait for)."""
        self._pool_code: int | None = None

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        with Horizontal(id="top"):
            yield QueuePanel()
            yield LatencyPanel()
        yield LanesPanel()
        yield TopicsPanel()
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
            reading = Reading(None, address, f"unexpected: {error!s}")
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
            self.query_one(TopicsPanel).show(reading.snapshot)
            if isinstance(self.screen, TopicsScreen | WorkerScreen):
                self.screen.show(reading.snapshot)
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
            read_only=self.read_only,
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
        if self._refused("+/- workers"):
            return
        if self.pool is None:
            self._command("scale", 1 if more else -1)
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

    MAIN_SCREEN_ONLY = frozenset(
        {"sort", "worker", "topics", "dead_letters", "filter", "log_level", "toggle_pause"}
    )
    POOL_ACTIONS = frozenset(
        {"more_workers", "fewer_workers", "pause_pool", "reload_pool", "stop_pool"}
    )

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The main screen's keys work there only (the footer of another screen leaves
        them out); the pool keys there and on the worker screen (the worker's pool)."""
        on_main = len(self.screen_stack) <= 1
        if action in self.MAIN_SCREEN_ONLY:
            return on_main
        if action in self.POOL_ACTIONS:
            return on_main or isinstance(self.screen, WorkerScreen)
        return True

    # --- commands to pools ----------------------------------------------------------------

    def target_pool(self) -> PoolView | None:
        """The pool a command goes to: the selected worker's, else the only live one;
        None (said) when there is no telling."""
        pools = {pool.name: pool for pool in (self.snapshot.pools if self.snapshot else ())}
        worker = self.query_one(WorkersPanel).selected()
        if worker is not None and worker.pool in pools:
            return pools[worker.pool]
        live = [pool for pool in pools.values() if not pool.stopping]
        if len(live) == 1 and worker is None:
            return live[0]
        self.notify(
            "select a worker of the pool to command (no live pool has it)"
            if worker is not None
            else "no live pool to command",
            severity="warning",
            markup=False,  # pool names come from the store: anyone may write them
        )
        return None

    def _refused(self, title: str) -> bool:
        """Says so, and True, in a read-only view."""
        if self.read_only:
            self.notify(READ_ONLY, title=title, severity="warning")
        return self.read_only

    def _command(self, action: str, value: int | None = None, *, toggle: bool = False) -> None:
        """Sends ``action`` to the target pool off the UI thread; its reply is notified.
        ``toggle``: a pause to a paused pool is a resume."""
        if self._refused(action):
            return
        pool = self.target_pool()
        if pool is None:
            return
        if toggle and pool.paused:
            action = "resume"
        try:
            command = control.new_command(action, value, "", remote.PROGRAM, to=pool.instance)
        except control.CommandError as error:
            self.notify(str(error), severity="error", markup=False)
            return
        self.notify(f"{pool.name}: {command.describe()}…", title="sent", timeout=2, markup=False)
        self._send(pool.name, command)

    @work(thread=True, group="control")
    def _send(self, pool: str, command: control.Command) -> None:
        outcome = remote.send(self.source, pool, command)
        self.call_from_thread(
            self.notify,
            outcome.said,
            title=f"{pool}: {command.describe()}",
            severity="information" if outcome.ok else "error",
            markup=False,
        )
        if outcome.ok:
            self.call_from_thread(self.refresh_snapshot)

    def action_pause_pool(self) -> None:
        self._command("pause", toggle=True)

    def action_reload_pool(self) -> None:
        self._command("reload")

    def action_stop_pool(self) -> None:
        if self._refused("stop"):
            return
        pool = self.target_pool()
        if pool is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._command("stop")

        question = (
            f"Stop pool {pool.name} on {pool.host}? Its workers finish their jobs and it "
            "exits (start it again there)."
        )
        self.push_screen(ConfirmScreen(question), answered)

    # --- views -----------------------------------------------------------------------------

    def action_sort(self) -> None:
        self.query_one(WorkersPanel).next_sort()

    def action_worker(self) -> None:
        worker = self.query_one(WorkersPanel).selected()
        if worker is None:
            self.notify("no worker to show", severity="warning")
            return
        kept = self.query_one(LogPanel).kept
        self.push_screen(WorkerScreen(worker, self.source, lambda: list(kept)))

    @on(DataTable.RowSelected, "#workers")
    def worker_selected(self) -> None:
        self.action_worker()

    def action_topics(self) -> None:
        self.push_screen(TopicsScreen(self.snapshot))

    def action_dead_letters(self) -> None:
        self.push_screen(DeadLettersScreen(self.source, read_only=self.read_only))

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
        if self.read_only:
            sections.insert(0, ("Read-only", [("", READ_ONLY)]))
        self.push_screen(HelpScreen(sections))

    KEY_HELP: ClassVar[dict[str, str]] = {
        "more_workers": "one worker more: this UI's pool, else the selected worker's",
        "fewer_workers": "one worker fewer, likewise",
        "pause_pool": "pause / resume the selected worker's pool",
        "reload_pool": "that pool reads its config files again",
        "stop_pool": "warm-stop that pool (asks first)",
        "sort": "sort the workers: id, state, cpu, rss, done, failed, recycle",
        "worker": "the selected worker: its job, process tree, last errors",
        "topics": "per topic over 5 minutes: n, rate, failures, wait, run time",
        "dead_letters": "the dead letters: filter, replay, purge",
        "filter": "filter the workers (id, host, state, pid)",
        "log_level": "log panel: the next level and above",
        "toggle_pause": "freeze / resume the view",
        "help": "this help (arrows scroll it)",
        "quit": "quit (with a pool: warm stop; q again: cold)",
        "filter_letters": "filter by topic or reason",
        "replay": "replay the selected one",
        "replay_shown": "replay what the filter shows (all, without one; asks first)",
        "purge": "delete them all for good (asks first)",
        "reload": "read the list again",
        "close": "back",
    }
    """What the help says of each action: more than the footer has room for."""

    def _keys_of(self, bindings: list[BindingType]) -> list[tuple[str, str]]:
        """Every key with a description, those the footer leaves out too (not ctrl+c)."""
        keys = [b for b in bindings if isinstance(b, Binding) and not b.key.startswith("ctrl")]
        return [(self.get_key_display(b), self.KEY_HELP.get(b.action, b.description)) for b in keys]

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
