"""Per topic over the last five minutes: how many, how fast, how many failed, how long
they waited and ran, the slowest (:class:`~tuitop.stats.TopicStats`)."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Static

from tuitop.durations import seconds
from tuitop.snapshot import Snapshot
from tuitop.stats import OTHER_TOPIC, TopicStats
from tuitop.tui.widgets import show_if_changed

WIDE = 110
"""From this width on, the p95 columns and the rate are shown too (the rate is n over
the 5 minutes: the topic's name has the room instead)."""


def topics_table(snapshot: Snapshot, width: int) -> Table:
    """The table of ``snapshot``'s topics (busiest first, OTHER_TOPIC last), for a panel
    ``width`` cells wide: narrower than WIDE, without the p95s and the rate."""
    window = snapshot.last_five_minutes
    wide = width >= WIDE
    table = Table(box=None, expand=True, pad_edge=False, header_style="dim")
    table.add_column("topic", no_wrap=True, overflow="ellipsis", ratio=1, min_width=12)
    quantiles = ("p50", "p95", "p99") if wide else ("p50", "p99")
    headers = ["n", "/s", "failed"] if wide else ["n", "fail"]
    headers += [f"wait {q}" if q == "p50" else q for q in quantiles]
    headers += [f"run {q}" if q == "p50" else q for q in quantiles]
    headers.append("slowest")
    for header in headers:
        table.add_column(header, justify="right", no_wrap=True)
    ordered = sorted(window.topics.items(), key=lambda item: item[0] == OTHER_TOPIC)
    for topic, stats in ordered:
        cells = _row(topic, stats, window.seconds, quantiles)
        table.add_row(*(cells if wide else cells[:2] + cells[3:]))
    if not window.topics:
        table.add_row(Text("no message finished in the last 5 minutes", style="dim"))
    return table


def _row(topic: str, stats: TopicStats, window: int, quantiles: tuple[str, ...]) -> list[Text]:
    cells = [
        # A topic is anyone's text: Text, never markup.
        Text(topic.removeprefix("tuleap."), style="dim" if topic == OTHER_TOPIC else ""),
        Text(f"{stats.count:,}"),
        Text(f"{stats.count / window:.2f}"),
        Text(f"{stats.failed:,}", style="bold red" if stats.failed else ""),
    ]
    for percentiles in (stats.wait, stats.run):
        cells += [Text(seconds(getattr(percentiles, q))) for q in quantiles]
    cells.append(Text(seconds(stats.run.max)))
    return cells


class TopicsPanel(Static):
    """The topics table of the last snapshot shown, fitted to its width."""

    def __init__(self, *, id: str = "topics") -> None:
        super().__init__(id=id, classes="panel")
        self.border_title = "Topics · last 5 min"
        self.border_subtitle = "wait: enqueue → start · run: start → end"
        self._snapshot: Snapshot | None = None

    def show(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        width = self.size.width
        key = (snapshot.last_five_minutes.topics, width >= WIDE)
        show_if_changed(self, topics_table(snapshot, width), key)

    def on_resize(self, event: events.Resize) -> None:
        if self._snapshot is not None:
            self.show(self._snapshot)


class TopicsScreen(Screen[None]):
    """The topics table alone, in any terminal (the main screen shows it only in a tall
    one); the app hands it each new snapshot."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,t", "close", "back")]

    def __init__(self, snapshot: Snapshot | None) -> None:
        super().__init__()
        self.snapshot = snapshot

    def compose(self) -> ComposeResult:
        yield Static("Topics over the last 5 minutes", id="topics-title", classes="title")
        yield TopicsPanel(id="topics-alone")
        yield Footer()

    def on_mount(self) -> None:
        if self.snapshot is not None:
            self.show(self.snapshot)

    def show(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.query_one(TopicsPanel).show(snapshot)

    def action_close(self) -> None:
        self.dismiss(None)
