"""One widget per panel of the main screen; each renders what it is given, reads nothing."""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Iterable

from rich.table import Table
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import RichLog, Sparkline, Static

from tuitop.check import OLDEST_WARNING
from tuitop.durations import seconds
from tuitop.lanes import DEFAULT_LANE, LaneSet, latency_target
from tuitop.snapshot import LaneView, PoolView, Snapshot
from tuitop.stats import Percentiles

LOG_LEVELS = ("debug", "info", "warning", "error")
LEVEL_STYLES = {"error": "red", "warning": "yellow", "debug": "dim"}
_LEVEL_IN_LINE = re.compile(r"\[(debug|info|warning|error|critical)\]")


def clock_time(moment: float) -> str:
    """``HH:MM:SS`` of an epoch time; ``?`` for one that is no date (a hostile hash)."""
    try:
        return time.strftime("%H:%M:%S", time.localtime(moment))
    except (OverflowError, ValueError, OSError):
        return "?"


def show_if_changed(
    widget: Static, content: Text | Table | str, key: object, *, fixed_height: bool = False
) -> None:
    """Updates ``widget`` only when ``key`` (what ``content`` was made of) changed: an
    unchanged panel is not rendered again (a refresh every half second must cost next to
    nothing), and a panel of ``fixed_height`` (set in the .tcss) needs no layout."""
    if getattr(widget, "_shown_key", None) == key:
        return
    widget._shown_key = key  # type: ignore[attr-defined]
    widget.update(content, layout=not fixed_height)


def set_data_if_changed(sparkline: Sparkline, data: list[float]) -> None:
    if list(sparkline.data or []) != data:
        sparkline.data = data


def store_label(address: str) -> str:
    """What the queue's server is, from its address: Tuleap's database (``mysql://…``,
    :attr:`~tuitop.config.DatabaseSettings.address`), else a Redis."""
    return "db" if address.startswith("mysql") else "redis"


class HeaderBar(Static):
    """One line: where the data comes from, whether it is live, what the pool is doing."""

    def show(
        self,
        *,
        redis_address: str,
        error: str,
        taken_at: float | None,
        paused: bool,
        pool_state: str = "",
        read_only: bool = False,
    ) -> None:
        parts = ["tuitop"]
        if error:
            parts.append(f"✘ {error}")  # the error names the address
            if taken_at is not None:
                parts.append(f"showing {clock_time(taken_at)}, retrying")
        else:
            parts.append(f"{store_label(redis_address)} {redis_address} ✔")
            if taken_at is not None:
                parts.append(clock_time(taken_at))
        if paused:
            parts.append("FROZEN (z resumes)")
        if read_only:
            parts.append("read-only")
        if pool_state:
            parts.append(pool_state)
        self.set_class(bool(error), "problem")
        text = " · ".join(parts)
        # One line (set in the .tcss) unless a problem is said, which may wrap.
        show_if_changed(self, text, text, fixed_height=not error)


def charts_subtitle(panel: Widget, subtitle: str) -> None:
    """Says what the panel's chart shows, or nothing where the terminal is too short for
    charts (the .tcss hides them on a ``-short`` screen)."""
    panel.border_subtitle = "" if panel.screen.has_class("-short") else subtitle


class QueuePanel(Vertical):
    """Depth now and over time, rates, the oldest waiting message, dead letters."""

    def __init__(self) -> None:
        super().__init__(id="queue", classes="panel")
        self.border_title = "Queue"
        self.border_subtitle = "depth, last 5 min"

    def compose(self) -> ComposeResult:
        yield Static(id="queue-figures")
        yield Sparkline([], id="depth")

    def on_resize(self, event: events.Resize) -> None:
        charts_subtitle(self, "depth, last 5 min")

    def show(self, snapshot: Snapshot) -> None:
        queue = snapshot.queue
        minute, recent = snapshot.last_minute, snapshot.last_ten_seconds
        oldest = Text(f"oldest {seconds(queue.oldest_age)}")
        if any(late(lane) for lane in snapshot.lanes):
            oldest.stylize("bold yellow")
        dead = Text(f"dead letters {queue.dead_letters:,}")
        if queue.dead_letters:
            dead.stylize("bold red")
        figures = Text.assemble(
            f"waiting {queue.waiting:,}{'+' if queue.waiting_capped else ''}   "
            f"processing {queue.processing:,}\n",
            oldest,
            f"   delayed {queue.delayed:,}\n",
            dead,
            f"   failed {minute.counts.get('failed', 0)}/min\n",
            f"in {recent.rate('enqueued'):.1f}/s   done {recent.rate('done'):.1f}/s",
        )
        figures_widget = self.query_one("#queue-figures", Static)
        show_if_changed(figures_widget, figures, figures.markup, fixed_height=True)
        # 10 s a bar from the pools' samples, then the depth now.
        depths = [float(w.depth or 0) for w in snapshot.history] + [float(queue.waiting)]
        set_data_if_changed(self.query_one("#depth", Sparkline), depths)


class LatencyPanel(Vertical):
    """Notification latency: waiting (enqueue → start) and what the user feels (enqueue →
    done), over 1 and 5 minutes, and end-to-end p95 over time, 10 s a bar."""

    def __init__(self) -> None:
        super().__init__(id="latency", classes="panel")
        self.border_title = "Notification latency"
        self.border_subtitle = "e2e p95 per 10 s, last 5 min"
        self._snapshot: Snapshot | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="latency-table")
        yield Sparkline([], id="latency-chart")

    NARROW = 46
    """Under this width (80 columns' terminal), the max column is left out."""

    def on_resize(self, event: events.Resize) -> None:
        charts_subtitle(self, "e2e p95 per 10 s, last 5 min")
        if self._snapshot is not None:
            self.show(self._snapshot)

    def show(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        narrow = self.size.width < self.NARROW
        columns = ("", "n", "p50", "p95", "p99") + (() if narrow else ("max",))
        table = Table(box=None, expand=True, pad_edge=False, header_style="dim")
        for column in columns:
            table.add_column(column, justify="right" if column else "left", no_wrap=True)

        def row(label: str, values: Percentiles) -> None:
            cells = [
                label,
                f"{values.count:,}",
                seconds(values.p50),
                seconds(values.p95),
                seconds(values.p99),
                seconds(values.max),
            ]
            table.add_row(*cells[: len(columns)])

        windows = (
            ("wait 1m", snapshot.last_minute.wait),
            ("e2e  1m", snapshot.last_minute.end_to_end),
            ("wait 5m", snapshot.last_five_minutes.wait),
            ("e2e  5m", snapshot.last_five_minutes.end_to_end),
        )
        for label, values in windows:
            row(label, values)
        latency_table = self.query_one("#latency-table", Static)
        show_if_changed(latency_table, table, (windows, narrow), fixed_height=True)
        chart = [window.end_to_end.p95 or 0.0 for window in snapshot.history]
        set_data_if_changed(self.query_one("#latency-chart", Sparkline), chart)


class LanesPanel(Static):
    """Each lane: its workers, what waits in it and for how long, its wait over a minute,
    its topics (tuitop.lanes: notifications never wait behind long jobs)."""

    def __init__(self) -> None:
        super().__init__(id="lanes", classes="panel")
        self.border_title = "Lanes"
        self.border_subtitle = "workers: own +helping · wait and done over 1 min"

    def show(self, snapshot: Snapshot) -> None:
        table = Table(box=None, expand=True, pad_edge=False, header_style="dim")
        table.add_column("lane", no_wrap=True)
        for column in ("workers", "waiting", "oldest", "wait p50", "p99", "done"):
            table.add_column(column, justify="right", no_wrap=True)
        table.add_column("topics", no_wrap=True, overflow="ellipsis", ratio=1)
        topics = _lane_topics(snapshot)
        stats = snapshot.last_minute.lanes
        rows = []
        for lane in snapshot.lanes:
            lane_stats = stats.get(lane.name)
            wait = lane_stats.wait if lane_stats else None
            workers = str(lane.workers) + (f" +{lane.helpers}" if lane.helpers else "")
            oldest = Text(seconds(lane.oldest_age))
            if late(lane):
                oldest.stylize("bold yellow")
            unserved = Text(workers, style="bold red" if not workers.strip("0 +") else "")
            row = (
                Text(lane.name),
                unserved,
                Text(f"{lane.waiting:,}"),
                oldest,
                Text(seconds(wait.p50 if wait else None)),
                Text(seconds(wait.p99 if wait else None)),
                Text(f"{lane_stats.done if lane_stats else 0:,}"),
                Text(topics.get(lane.name, ""), style="dim"),
            )
            rows.append(row)
            table.add_row(*row)
        show_if_changed(self, table, tuple(tuple(cell.markup for cell in row) for row in rows))


def late(lane: LaneView) -> bool:
    """Its oldest message waited past the lane's latency target (a name like
    ``latency_15m`` says it), else past Tuleap's SYSTEM_CHECK limit (120 s)."""
    target = latency_target(lane.name) or OLDEST_WARNING
    return lane.oldest_age is not None and lane.oldest_age > target


def _lane_topics(snapshot: Snapshot) -> dict[str, str]:
    """Each lane's topics as the first pool's config that names it says; "every other
    topic" where those no lane names go (the default lane, or a lane written with ``*``)."""
    topics: dict[str, str] = {}
    rest = ""
    for pool in snapshot.pools:
        try:
            lanes = LaneSet.parse(pool.lanes)
        except ValueError:
            continue
        rest = rest or lanes.catch_all
        for lane in lanes.lanes:
            named = [topic for topic in lane.topics if topic != "*"]
            topics.setdefault(lane.name, ", ".join(named))
    rest = rest or DEFAULT_LANE
    topics[rest] = ", ".join(filter(None, (topics.get(rest, ""), "every other topic")))
    return topics


class ConfigPanel(Static):
    """The configuration in force in each pool, and its error in plain sight."""

    def __init__(self) -> None:
        super().__init__(id="config", classes="panel")
        self.border_title = "Config"
        self._snapshot: Snapshot | None = None

    def on_resize(self, event: events.Resize) -> None:
        if self._snapshot is not None:
            self.show(self._snapshot)

    def show(self, snapshot: Snapshot) -> None:
        """Every pool's config, then the errors; on a short screen (where the .tcss shows
        this panel only for an error), the errors alone."""
        self._snapshot = snapshot
        short = self.screen.has_class("-short")
        lines: list[Text] = []
        errors = [pool for pool in snapshot.pools if pool.config_error]
        for pool in () if short else snapshot.pools:
            lines.append(self._describe(pool))
        if not snapshot.pools:
            lines.append(Text("no pool is running on this queue", style="dim"))
        where = "the config in force" if short else "the config above"
        for pool in errors:
            lines.append(
                Text(
                    f"✘ {pool.name}: the last save was refused, {where} stays: {pool.config_error}",
                    style="bold red",
                )
            )
        self.set_class(bool(errors), "problem")
        text = Text("\n").join(lines)
        show_if_changed(self, text, text.markup)

    @staticmethod
    def _describe(pool: PoolView) -> Text:
        files = ", ".join(pool.files) or "built-in defaults"
        workers = f"workers {pool.running}/{pool.wanted}"
        if pool.wanted != pool.configured:
            workers += f" (files say {pool.configured}; +/- for this session)"
        try:
            lanes = LaneSet.parse(pool.lanes)
        except ValueError:
            lanes = LaneSet()
        reserved = " ".join(
            f"{lane.name}({lane.workers}{'%' if lane.percent else ''})" for lane in lanes.reserved
        )
        return Text(
            f"{pool.name}@{pool.host}  {files}  loaded {clock_time(pool.loaded_at)}  "
            f"{workers}  lanes {reserved or 'none'}  async {pool.async_scope}  "
            f"log {pool.log_level}  {store_label(pool.redis)} {pool.redis}"
        )


def line_level(line: str, previous: str) -> str:
    """The level of a worker_log line; a line without one (a traceback's) is its
    predecessor's."""
    found = _LEVEL_IN_LINE.search(line)
    if found is None:
        return previous
    return "error" if found.group(1) == "critical" else found.group(1)


class LogPanel(RichLog):
    """A tail of the worker_log; shows the lines at the chosen level and above."""

    KEPT = 1000

    def __init__(self) -> None:
        super().__init__(id="log", classes="panel", max_lines=self.KEPT, wrap=False)
        self.min_level = "debug"
        self._kept: deque[tuple[str, str]] = deque(maxlen=self.KEPT)
        self._last_level = "info"
        self._title()

    @property
    def kept(self) -> deque[tuple[str, str]]:
        """The last KEPT lines as ``(level, line)``, oldest first, whatever is shown."""
        return self._kept

    def _title(self) -> None:
        shown = "all levels" if self.min_level == "debug" else f"{self.min_level} and above"
        self.border_title = f"Log · {shown} (l to change)"

    def _shown(self, level: str) -> bool:
        return LOG_LEVELS.index(level) >= LOG_LEVELS.index(self.min_level)

    def add_lines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self._last_level = line_level(line, self._last_level)
            self._kept.append((self._last_level, line))
            if self._shown(self._last_level):
                self.write(self._styled(self._last_level, line))

    def next_level(self) -> str:
        """Shows one level more severe (after error: all again); returns the new one."""
        self.min_level = LOG_LEVELS[(LOG_LEVELS.index(self.min_level) + 1) % len(LOG_LEVELS)]
        self._title()
        self.clear()
        for level, line in self._kept:
            if self._shown(level):
                self.write(self._styled(level, line))
        return self.min_level

    @staticmethod
    def _styled(level: str, line: str) -> Text:
        return Text(line, style=LEVEL_STYLES.get(level, ""))
