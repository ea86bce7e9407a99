"""One worker up close (``enter`` on its row): its job, its task process tree, its last
errors."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

import psutil
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from tuitop.backends.errors import StoreError
from tuitop.durations import seconds
from tuitop.message import Message
from tuitop.snapshot import Snapshot, WorkerView
from tuitop.tui.source import SnapshotSource
from tuitop.tui.widgets import clock_time
from tuitop.tui.workers import worker_state

SHOWN_ERRORS = 8
COMMAND_SHOWN = 160
"""Characters of a command line shown (a task's arguments may be long)."""
MESSAGE_SHOWN = 300


@dataclass(frozen=True)
class TreeProcess:
    pid: int
    depth: int
    """0 for the worker, 1 for its task process…"""
    command: str
    cpu: float | None
    rss: int | None


class ProcessReader:
    """Reads a process tree with psutil; CPU % is over the time since the last read of
    the same process (the first read says none)."""

    def __init__(self) -> None:
        self._known: dict[int, psutil.Process] = {}

    def read(self, pid: int) -> list[TreeProcess]:
        """The process ``pid`` and its descendants, parents before their children; empty
        when it is gone or not ours to read."""
        try:
            root = psutil.Process(pid)
            found = [(root, 0)]
            found += self._descendants(root, 1)
        except (psutil.Error, ValueError, OverflowError):
            return []
        known: dict[int, psutil.Process] = {}
        tree = []
        for process, depth in found:
            # The same object as before: cpu_percent measures since its previous call.
            process = self._known.get(process.pid, process)
            known[process.pid] = process
            tree.append(self._describe(process, depth))
        self._known = known
        return tree

    def _descendants(self, parent: psutil.Process, depth: int) -> list[tuple[psutil.Process, int]]:
        found: list[tuple[psutil.Process, int]] = []
        with contextlib.suppress(psutil.Error):
            for child in parent.children():
                found.append((child, depth))
                found += self._descendants(child, depth + 1)
        return found

    def _describe(self, process: psutil.Process, depth: int) -> TreeProcess:
        first = process.pid not in self._known
        try:
            with process.oneshot():
                command = " ".join(process.cmdline()) or process.name()
                cpu = process.cpu_percent(interval=None)
                rss = int(process.memory_info().rss)
        except psutil.Error:
            return TreeProcess(process.pid, depth, "(gone)", None, None)
        return TreeProcess(process.pid, depth, command, None if first else cpu, rss)


def last_errors(worker: WorkerView, lines: Iterable[tuple[str, str]]) -> list[str]:
    """The last SHOWN_ERRORS warning and error lines of the log (``(level, line)``) that
    name the worker: its id, or its pid as the worker_log writes it (``[4121]``)."""
    marks = [worker.id]
    if worker.pid:
        marks.append(f"[{worker.pid}]")
    found = [
        line
        for level, line in lines
        if level in ("warning", "error") and any(mark in line for mark in marks)
    ]
    return found[-SHOWN_ERRORS:]


def job_text(worker: WorkerView, now: float, held: list[Message] | None) -> Text:
    """What the worker does: its state, its job's topic, when it started, its task
    process, the message it holds."""
    text = Text()

    def field(label: str, value: str, style: str = "") -> None:
        text.append(f"{label:<10}", style="bold")
        text.append(f"{value}\n", style=style)

    field("state", worker_state(worker, now))
    if worker.state == "busy":
        field("topic", worker.topic or "—")
        if worker.job_started:
            field(
                "started",
                f"{clock_time(worker.job_started)} ({seconds(now - worker.job_started)} ago)",
            )
        field("task pid", str(worker.task_pid) if worker.task_pid else "— (runs in the worker)")
    field(
        "counts",
        f"done {worker.done:,} · failed {worker.failed:,} · processed {worker.processed:,}"
        + (f" of {worker.max_messages:,} before it is replaced" if worker.max_messages else ""),
    )
    if held is None:
        field("holding", f"{worker.holding} message(s)")
    elif not held:
        field("holding", "nothing")
    for message in held or ():
        where = f"row {message.row_id.decode(errors='replace')}" if message.row_id else ""
        age = message.age(now)
        field(
            "message",
            " · ".join(
                part
                for part in (
                    message.topic or "(no topic)",
                    where,
                    f"enqueued {seconds(age)} ago" if age is not None else "",
                )
                if part
            ),
        )
        shown = message.raw[:MESSAGE_SHOWN].decode("utf-8", "replace")
        field("", shown + ("…" if len(message.raw) > MESSAGE_SHOWN else ""), style="dim")
    text.rstrip()
    return text


class WorkerScreen(Screen[None]):
    """One worker: the app hands it each new snapshot; it reads the worker's process
    tree (this host's workers only, with psutil) and what the worker holds (one read of
    the store when its job changes) off the UI thread."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter", "close", "back")]

    def __init__(
        self,
        worker: WorkerView,
        source: SnapshotSource,
        log_lines: Callable[[], Iterable[tuple[str, str]]],
        *,
        host: str | None = None,
    ) -> None:
        super().__init__()
        self.worker = worker
        self.source = source
        self.log_lines = log_lines
        self.host = host or socket.gethostname()
        self.held: list[Message] | None = None
        self._held_for: tuple[float, int] | None = None
        self._reader = ProcessReader()
        self._now = worker.beat

    def compose(self) -> ComposeResult:
        yield Static(id="worker-title", classes="title")
        with VerticalScroll(id="worker-body"):
            yield Static(id="worker-job", classes="section")
            yield Static("Process tree", classes="section-title")
            table: DataTable[Text] = DataTable(id="worker-tree", cursor_type="none")
            table.add_column("pid", width=8, key="pid")
            table.add_column("cpu", width=5, key="cpu")
            table.add_column("rss", width=8, key="rss")
            table.add_column("command", key="command")
            yield table
            yield Static(id="worker-tree-note", classes="note")
            yield Static("Last errors", classes="section-title")
            yield Static(id="worker-errors", classes="section")
        yield Footer()

    def on_mount(self) -> None:
        self.show_worker(self.worker, self._now)

    def show(self, snapshot: Snapshot) -> None:
        """The worker as ``snapshot`` has it (gone: said, the last picture kept)."""
        found = next((w for w in snapshot.workers if w.id == self.worker.id), None)
        if found is None:
            self.query_one("#worker-title", Static).update(
                Text(f"{self.worker.id}: gone (stopped, or replaced after its messages)")
            )
            return
        self.show_worker(found, snapshot.taken_at)

    def show_worker(self, worker: WorkerView, now: float) -> None:
        self.worker, self._now = worker, now
        title = f"Worker {worker.id} · host {worker.host or '?'} · pid {worker.pid}"
        title += f" · lane {worker.lane}"
        self.query_one("#worker-title", Static).update(Text(title))
        self._show_job()
        errors = last_errors(worker, self.log_lines())
        shown = Text("\n").join(Text(line, style="red") for line in errors)
        if not errors:
            shown = Text(
                f"none in the log shown ({worker.failed:,} failure(s) since it started, "
                "as its heartbeat says; d: the dead letters)",
                style="dim",
            )
        self.query_one("#worker-errors", Static).update(shown)
        local = worker.host == self.host
        self.query_one("#worker-tree", DataTable).display = local
        if local and worker.pid and worker.state != "dead":
            self._read_tree(worker.pid)
        elif local:
            self._show_tree([], "no process: the worker is gone")
        else:
            self._show_tree(
                [], f"on host {worker.host or '?'}: tuitop top there shows its processes"
            )
        job = (worker.job_started, worker.holding)
        if job != self._held_for:
            self._held_for = job
            self._read_held(worker.id)

    def _show_job(self) -> None:
        text = job_text(self.worker, self._now, self.held)
        self.query_one("#worker-job", Static).update(text)

    @work(thread=True, exclusive=True, group="worker-tree")
    def _read_tree(self, pid: int) -> None:
        tree = self._reader.read(pid)
        note = "" if tree else f"pid {pid} is gone, or not readable by this user"
        self.app.call_from_thread(self._show_tree, tree, note)

    def _show_tree(self, tree: list[TreeProcess], note: str) -> None:
        table = self.query_one("#worker-tree", DataTable)
        table.clear()
        for process in tree:
            command = "  " * process.depth + process.command[:COMMAND_SHOWN]
            table.add_row(
                Text(str(process.pid)),
                Text("—" if process.cpu is None else f"{process.cpu:.0f}%", justify="right"),
                Text(
                    "—" if process.rss is None else f"{process.rss / 1e6:.0f} MB", justify="right"
                ),
                Text(command),
            )
        self.query_one("#worker-tree-note", Static).update(Text(note, style="dim"))

    @work(thread=True, exclusive=True, group="worker-held")
    def _read_held(self, worker_id: str) -> None:
        failures: tuple[type[BaseException], ...] = (StoreError, ValueError)
        try:
            held = self.source.with_queue(lambda queue: queue.held(worker_id))
        except failures:
            return  # the header says the store is away; the heartbeat's count stays
        self.app.call_from_thread(self._held_read, held)

    def _held_read(self, held: list[Message]) -> None:
        self.held = held
        self._show_job()

    def action_close(self) -> None:
        self.dismiss(None)
