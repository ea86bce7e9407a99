"""The worker table: one row per worker of every pool sharing the store, sorted by a key
the operator picks, its columns dropped by priority when the terminal is narrow."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import events
from textual.widgets import DataTable

from tuitop.durations import seconds
from tuitop.snapshot import Snapshot, WorkerView

SILENT_AFTER = 3.0
"""A heartbeat older than this (they come every second) is said: the state may be stale."""


def worker_state(worker: WorkerView, now: float, width: int = 0) -> str:
    """idle · busy TOPIC 2.1 s · stopping · starting · dead (holding N); a state as of the
    worker's last heartbeat, which a silent worker's row says. Given a ``width``, a busy
    worker's topic is cut (``…``) so that the time it has run still shows."""
    state = worker.state
    if state == "busy":
        # Tuleap's topics all begin so: the rest says more in the room there is.
        state = f"busy {worker.topic.removeprefix('tuleap.')}".rstrip()
    if state.startswith("busy") and worker.job_started:
        # As of the heartbeat: now - job_started would count time since, when the worker
        # may well have finished that job and be idle.
        took = f" {seconds(job_time(worker))}"
        if width and len(state) + len(took) > width:
            state = state[: max(width - len(took) - 1, 6)] + "…"
        state += took
    if worker.state == "dead":
        return f"dead (holding {worker.holding})" if worker.holding else "dead"
    if worker.beat and now - worker.beat > SILENT_AFTER:
        state += f" (silent {seconds(now - worker.beat)})"
    return state


def job_time(worker: WorkerView) -> float:
    """How long its job had run at its last heartbeat (0 when idle)."""
    if worker.state != "busy" or not worker.job_started:
        return 0.0
    return max(worker.beat - worker.job_started, 0.0)


def until_recycle(worker: WorkerView) -> int | None:
    """Messages before it is replaced (None: never)."""
    return max(worker.max_messages - worker.processed, 0) if worker.max_messages else None


@dataclass(frozen=True)
class Column:
    label: str
    width: int


COLUMNS = (
    Column("id", 13),
    Column("host", 10),
    Column("pid", 7),
    Column("lane", 11),
    Column("state", 34),
    Column("done", 7),
    Column("failed", 6),
    Column("recycle", 8),
    Column("cpu", 5),
    Column("rss", 7),
)
"""In the order shown, at full width. Fixed widths: columns that do not jump from one
refresh to the next."""
KEPT_LONGEST = ("id", "state", "done", "failed", "cpu", "rss", "recycle", "pid", "lane", "host")
"""Which columns stay as the table narrows: the last goes first (a worker's id names its
pool, which is usually its host)."""
STATE_NARROWEST = 22
"""The state column shrinks down to this (``busy tracker.artifact 1.2 s``) before a column
is dropped for it."""
CELL_PADDING = 2
"""A DataTable cell's padding (one each side)."""
SCROLLBAR = 2
"""Kept for the vertical scroll bar, which comes and goes with the number of rows."""


def columns_for(width: int) -> tuple[Column, ...]:
    """The columns that fit in ``width`` cells: the most of KEPT_LONGEST, in that order of
    priority, with a state column at least STATE_NARROWEST wide (id and state always,
    even when they do not fit)."""
    room = width - SCROLLBAR
    by_label = {column.label: column for column in COLUMNS}
    for count in range(len(KEPT_LONGEST), 1, -1):
        kept = KEPT_LONGEST[:count]
        others = sum(by_label[label].width + CELL_PADDING for label in kept if label != "state")
        state_width = min(room - others - CELL_PADDING, by_label["state"].width)
        if state_width >= STATE_NARROWEST or count == 2:
            state = Column("state", max(state_width, STATE_NARROWEST))
            return tuple(
                state if column.label == "state" else column
                for column in COLUMNS
                if column.label in kept
            )
    raise AssertionError("unreachable: id and state are always kept")


STATE_ORDER = {"busy": 0, "stopping": 1, "starting": 2, "idle": 3, "dead": 4}


@dataclass(frozen=True)
class SortKey:
    name: str
    column: str
    """The column whose header shows the order."""
    key: Callable[[WorkerView], tuple[object, ...]]
    descending: bool = False


SORT_KEYS = (
    SortKey("id", "id", lambda w: (w.id,)),
    SortKey("state", "state", lambda w: (STATE_ORDER.get(w.state, 5), -job_time(w), w.id)),
    SortKey("cpu", "cpu", lambda w: (w.cpu or 0.0, w.id), descending=True),
    SortKey("rss", "rss", lambda w: (w.rss or 0, w.id), descending=True),
    SortKey("done", "done", lambda w: (w.done, w.id), descending=True),
    SortKey("failed", "failed", lambda w: (w.failed, w.id), descending=True),
    SortKey("recycle", "recycle", lambda w: (until_recycle(w) or 0, w.id)),
)
"""What ``s`` cycles through: by id (the store's order of pools and slots), the busiest
first (longest-running job on top), the hungriest, the most productive, the most failing,
the nearest to being replaced."""


class WorkersPanel(DataTable[Text]):
    """One row per worker, on every host sharing the store; a filter narrows the rows, a
    sort key orders them, the terminal's width decides the columns (:func:`columns_for`).
    The selected row follows its worker through re-sorts and refreshes."""

    STATE_STYLES: ClassVar[dict[str, str]] = {
        "busy": "green",
        "stopping": "yellow",
        "starting": "cyan",
        "dead": "red",
    }

    def __init__(self) -> None:
        super().__init__(id="workers", classes="panel", cursor_type="row", zebra_stripes=True)
        self.border_title = "Workers"
        self.filter = ""
        self.sort_key = SORT_KEYS[0]
        self.columns_shown: tuple[Column, ...] = COLUMNS
        self.shown_workers: list[WorkerView] = []
        """The rows shown, in order."""
        self._rows: list[tuple[str, tuple[Text, ...]]] = []
        self._snapshot: Snapshot | None = None
        self._keep: str | None = None
        """The worker selected before a rebuild (which clears the cursor)."""

    def on_mount(self) -> None:
        self._add_columns()

    def _add_columns(self) -> None:
        for column in self.columns_shown:
            label = column.label
            if column.label == self.sort_key.column and self.sort_key.name != "id":
                label += " ▼" if self.sort_key.descending else " ▲"
            self.add_column(label, width=column.width, key=column.label)

    def on_resize(self, event: events.Resize) -> None:
        wanted = columns_for(self.size.width)
        if wanted != self.columns_shown:
            self.columns_shown = wanted
            self._rebuild()

    def next_sort(self) -> SortKey:
        """Orders the rows by the next key of SORT_KEYS; returns it."""
        index = SORT_KEYS.index(self.sort_key)
        self.sort_key = SORT_KEYS[(index + 1) % len(SORT_KEYS)]
        self._rebuild()
        return self.sort_key

    def _rebuild(self) -> None:
        """New columns or a new order: drawn again whole, the selection kept."""
        chosen = self.selected()
        self._keep = chosen.id if chosen else None
        self.clear(columns=True)
        self._add_columns()
        self._rows = []
        if self._snapshot is not None:
            self.show(self._snapshot)

    def _state_width(self) -> int:
        return next(c.width for c in self.columns_shown if c.label == "state")

    def selected(self) -> WorkerView | None:
        """The worker of the selected row (None when the table is empty)."""
        row = self.cursor_row
        return self.shown_workers[row] if 0 <= row < len(self.shown_workers) else None

    def matches(self, worker: WorkerView, now: float) -> bool:
        if not self.filter:
            return True
        needle = self.filter.lower()
        fields = (worker.id, worker.host, worker_state(worker, now), str(worker.pid))
        return any(needle in field.lower() for field in fields)

    def show(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        wanted = sum(pool.wanted for pool in snapshot.pools)
        running = sum(1 for worker in snapshot.workers if worker.state != "dead")
        title = f"Workers {running} running / {wanted} wanted"
        shown = [w for w in snapshot.workers if self.matches(w, snapshot.taken_at)]
        shown.sort(key=self.sort_key.key, reverse=self.sort_key.descending)
        if self.filter:
            title += f" · filter '{self.filter}': {len(shown)} shown"
        if self.sort_key.name != "id":
            title += f" · by {self.sort_key.name} (s)"
        paused = [pool.name for pool in snapshot.pools if pool.paused]
        if paused:
            title += f" · paused: {', '.join(paused)}"
        held = [pool.name for pool in snapshot.pools if pool.held]
        if held:
            # Held until Tuleap's sanity check passes; the log and `tuitop check` say more.
            title += f" · Tuleap upgrade: {', '.join(held)}"
        self.border_title = Text(title)  # Text: a filter or a pool name is no markup
        labels = [column.label for column in self.columns_shown]
        rows = [(w.id, self._cells(w, snapshot.taken_at, labels)) for w in shown]
        if [key for key, _ in rows] == [key for key, _ in self._rows]:
            # The same workers in the same order: only the cells that changed are drawn.
            for (key, cells), (_, before) in zip(rows, self._rows, strict=True):
                for label, cell, old in zip(labels, cells, before, strict=True):
                    if cell != old:
                        self.update_cell(key, label, cell)
        else:
            chosen = self.selected()
            keep = self._keep or (chosen.id if chosen else None)
            self._keep = None
            self.clear()
            for key, cells in rows:
                self.add_row(*cells, key=key)
            ids = [key for key, _ in rows]
            if keep in ids:
                self.move_cursor(row=ids.index(keep), animate=False)
            elif rows and self.cursor_row > 0:
                self.move_cursor(row=min(self.cursor_row, len(rows) - 1), animate=False)
        self._rows = rows
        self.shown_workers = shown

    def _cells(self, worker: WorkerView, now: float, labels: list[str]) -> tuple[Text, ...]:
        recycle = until_recycle(worker)
        cells = {
            "id": lambda: Text(worker.slot_name),
            "host": lambda: Text(worker.host or "—"),
            "pid": lambda: Text(str(worker.pid)),
            "lane": lambda: Text(worker.lane if worker.state != "dead" else "—"),
            "state": lambda: Text(
                worker_state(worker, now, self._state_width()),
                style=self.STATE_STYLES.get(worker.state, ""),
            ),
            "done": lambda: Text(f"{worker.done:,}", justify="right"),
            "failed": lambda: Text(
                f"{worker.failed:,}", justify="right", style="red" if worker.failed else ""
            ),
            "recycle": lambda: Text("—" if recycle is None else f"{recycle:,}", justify="right"),
            "cpu": lambda: Text(
                "—" if worker.cpu is None else f"{worker.cpu:.0f}%", justify="right"
            ),
            "rss": lambda: Text(
                "—" if worker.rss is None else f"{worker.rss / 1e6:.0f} MB", justify="right"
            ),
        }
        return tuple(cells[label]() for label in labels)
