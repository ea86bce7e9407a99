"""One widget per panel; each renders a :class:`~tuitop.snapshot.Snapshot` it is given."""

from __future__ import annotations

import time
from collections import deque

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Sparkline, Static

from tuitop.snapshot import Snapshot
from tuitop.stats import Percentiles

OLDEST_WARNING = 120.0
"""Tuleap's SYSTEM_CHECK warns past this age of the oldest waiting message."""
DEPTH_HISTORY = 300


def seconds(value: float | None) -> str:
    """A duration the way an operator reads it: 0.8ms, 21ms, 4.2 s, 3 min."""
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.1f}ms" if value < 0.01 else f"{value * 1000:.0f}ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.0f} min"


class HeaderBar(Static):
    """Where the data comes from, and whether it can be trusted right now."""

    def show(self, snapshot: Snapshot | None, redis_address: str, error: str) -> None:
        parts = ["tuitop"]
        if error:
            parts.append(f"redis {redis_address} ✘ {error}")
            self.add_class("problem")
            self.update(" · ".join(parts))
            return
        parts.append(f"redis {redis_address} ✔")
        config_error = ""
        if snapshot is not None:
            for pool in snapshot.pools:
                loaded = time.strftime("%H:%M:%S", time.localtime(pool.loaded_at))
                files = " + ".join(path.rsplit("/", 1)[-1] for path in pool.files) or "defaults"
                parts.append(f"{pool.name}: {files} (loaded {loaded})")
                config_error = config_error or pool.config_error
            scope = snapshot.config.get("async_scope")
            if scope:
                parts.append(f"scope: {scope}")
        if config_error:
            parts.append(f"config error: {config_error}")
        self.set_class(bool(config_error), "problem")
        self.update(" · ".join(parts))


class QueuePanel(Vertical):
    """Depth now and over time, rates, the oldest waiting message, dead letters."""

    def __init__(self) -> None:
        super().__init__(id="queue", classes="panel")
        self.border_title = "Queue"
        self._depths: deque[float] = deque(maxlen=DEPTH_HISTORY)

    def compose(self) -> ComposeResult:
        yield Static(id="queue-figures")
        yield Sparkline([], id="depth")

    def show(self, snapshot: Snapshot) -> None:
        queue = snapshot.queue
        self._depths.append(float(queue.waiting))
        minute, recent = snapshot.last_minute, snapshot.last_ten_seconds
        oldest = Text(f"oldest {seconds(queue.oldest_age)}")
        if queue.oldest_age is not None and queue.oldest_age > OLDEST_WARNING:
            oldest.stylize("bold yellow")
        figures = Text.assemble(
            f"waiting {queue.waiting:,}   processing {queue.processing:,}\n",
            oldest,
            f"   delayed {queue.delayed:,}\n",
            f"dead letters {queue.dead_letters:,}   failed {minute.counts.get('failed', 0)}/min\n",
            f"in {recent.rate('enqueued'):.1f}/s   done {recent.rate('done'):.1f}/s",
        )
        self.query_one("#queue-figures", Static).update(figures)
        self.query_one("#depth", Sparkline).data = list(self._depths)


class LatencyPanel(Static):
    """Notification latency: waiting (enqueue → start) and end to end, 1 and 5 minutes."""

    def __init__(self) -> None:
        super().__init__(id="latency", classes="panel")
        self.border_title = "Latency"

    def show(self, snapshot: Snapshot) -> None:
        table = Table(box=None, expand=True, pad_edge=False)
        for column in ("", "n", "p50", "p95", "p99", "max"):
            table.add_column(column, justify="right" if column else "left")

        def row(label: str, values: Percentiles) -> None:
            table.add_row(
                label,
                f"{values.count:,}",
                seconds(values.p50),
                seconds(values.p95),
                seconds(values.p99),
                seconds(values.max),
            )

        row("wait 1m", snapshot.last_minute.wait)
        row("e2e  1m", snapshot.last_minute.end_to_end)
        row("wait 5m", snapshot.last_five_minutes.wait)
        row("e2e  5m", snapshot.last_five_minutes.end_to_end)
        self.update(table)


class WorkersPanel(DataTable[str]):
    """One row per live worker, on every host sharing the Redis."""

    COLUMNS = ("id", "host", "pid", "state", "done", "failed", "recycle in", "cpu", "rss")

    def __init__(self) -> None:
        super().__init__(id="workers", classes="panel", cursor_type="row", zebra_stripes=True)
        self.border_title = "Workers"

    def on_mount(self) -> None:
        self.add_columns(*self.COLUMNS)

    def show(self, snapshot: Snapshot) -> None:
        wanted = sum(pool.wanted for pool in snapshot.pools)
        self.border_title = f"Workers {len(snapshot.workers)}/{wanted}"
        self.clear()
        for worker in snapshot.workers:
            state = worker.state
            if state == "busy" and worker.job_started:
                state = f"busy {worker.topic} {seconds(snapshot.taken_at - worker.job_started)}"
            self.add_row(
                worker.id.split("#", 1)[0],
                worker.host,
                str(worker.pid),
                state,
                f"{worker.done:,}",
                f"{worker.failed:,}",
                f"{max(worker.max_messages - worker.processed, 0):,}",
                "—" if worker.cpu is None else f"{worker.cpu:.0f}%",
                "—" if worker.rss is None else f"{worker.rss / 1e6:.0f} MB",
                key=worker.id,
            )
