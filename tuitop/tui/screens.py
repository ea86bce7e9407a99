"""The screens over the main one: the dead letters, help, and a yes/no question."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Input, Label, Static

from tuitop.backends.base import DeadLetter, QueueAdmin
from tuitop.backends.errors import StoreError
from tuitop.tui.source import SnapshotSource

SHOWN_LETTERS = 500


class ConfirmScreen(ModalScreen[bool]):
    """Asks before something that cannot be undone; dismissed with True for yes."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "yes"),
        Binding("n,escape", "answer(False)", "no"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Grid(id="confirm"):
            yield Label(Text(self.question), id="question")  # anyone's text: no markup
            yield Button("Yes (y)", variant="error", id="yes")
            yield Button("No (n)", variant="primary", id="no")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class HelpScreen(ModalScreen[None]):
    """The keys of every screen, and what the mouse does."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "close", "close")]

    def __init__(self, sections: list[tuple[str, list[tuple[str, str]]]]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        text = Text()
        for title, rows in self.sections:
            text.append(f"{title}\n", style="bold")
            for key, description in rows:
                text.append(f"  {key:<9}", style="bold cyan")
                text.append(" ")
                text.append(f"{description}\n")
            text.append("\n")
        text.append(
            "Mouse: click a key in the footer, a worker or dead-letter row to select it, "
            "scroll the log and the tables.",
            style="dim",
        )
        with VerticalScroll(id="help"):  # taller than a small terminal: it scrolls
            yield Static(text)

    def action_close(self) -> None:
        self.dismiss(None)


def _letter_detail(letter: DeadLetter, mask: Callable[[str], str]) -> Text:
    """A dead letter whole, the passwords in force masked (``mask``), as the log does."""
    try:
        message = json.dumps(json.loads(letter.message), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        message = letter.message.decode("utf-8", "replace")
    at = datetime.fromtimestamp(letter.at).isoformat(sep=" ", timespec="seconds")
    text = Text()
    for label, value in (
        ("reason", mask(letter.reason)),
        ("topic", letter.topic or "—"),
        ("worker", letter.worker or "—"),
        ("at", at),
        ("tries", str(letter.tries)),
    ):
        text.append(f"{label:<8}", style="bold")
        text.append(f"{value}\n")
    text.append("message\n", style="bold")
    text.append(f"{mask(message)}\n")
    if letter.traceback:
        text.append("traceback\n", style="bold")
        text.append(mask(letter.traceback), style="red")
    return text


def letter_matches(letter: DeadLetter, needle: str) -> bool:
    """The filter of the dead-letter screen: ``needle`` in its topic or its reason, case
    ignored ('' matches all)."""
    needle = needle.lower()
    return needle in letter.topic.lower() or needle in letter.reason.lower()


class DeadLettersScreen(Screen[None]):
    """The dead letters, newest first: filter them by topic or reason, inspect one, replay
    it or what the filter shows, purge them all. ``read_only`` refuses every write."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,d", "close", "back"),
        # The footer has 80 columns at worst: the filter's key is in its placeholder.
        Binding("slash", "filter_letters", "filter", show=False),
        Binding("r", "replay", "replay"),
        Binding("a", "replay_shown", "replay shown"),
        Binding("x", "purge", "purge all"),
        Binding("g", "reload", "reload"),
    ]

    def __init__(self, source: SnapshotSource, *, read_only: bool = False) -> None:
        super().__init__()
        self.source = source
        self.read_only = read_only
        self.loaded: list[DeadLetter] = []
        """What was read (the SHOWN_LETTERS newest)."""
        self.letters: list[DeadLetter] = []
        """What the filter shows of them, in the table's order."""
        self.total = 0
        self.filter = ""

    def compose(self) -> ComposeResult:
        yield Static("Dead letters", id="letters-title", classes="title")
        yield Input(placeholder="/ filter: topic or reason", id="letters-filter")
        table: DataTable[str] = DataTable(id="letters", cursor_type="row", zebra_stripes=True)
        table.add_columns("#", "at", "topic", "tries", "reason")
        yield table
        with VerticalScroll(id="letter-detail-box"):
            yield Static(id="letter-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#letters", DataTable).focus()
        self.action_reload()

    def action_close(self) -> None:
        field = self.query_one("#letters-filter", Input)
        if field.has_focus:  # escape in the filter clears it, not the screen
            field.value = ""
            self.query_one("#letters", DataTable).focus()
            return
        self.dismiss(None)

    def action_filter_letters(self) -> None:
        self.query_one("#letters-filter", Input).focus()

    @on(Input.Changed, "#letters-filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.filter = event.value.strip()
        self._show(self.loaded, self.total)

    @on(Input.Submitted, "#letters-filter")
    def filter_done(self) -> None:
        self.query_one("#letters", DataTable).focus()

    def action_reload(self) -> None:
        self._run(lambda queue: None, "")

    # Not exclusive: a write queued behind another must run, not be cancelled by it.
    @work(thread=True, group="dead-letters")
    def _run(self, action: Callable[[QueueAdmin], str | None], done: str) -> None:
        """Runs ``action`` off the UI thread, then reads the list again."""

        def act(queue: QueueAdmin) -> tuple[str | None, list[DeadLetter], int]:
            said = action(queue)
            letters = queue.dead_letters(0, SHOWN_LETTERS)
            return said, letters, queue.dead_letter_count()

        failures: tuple[type[BaseException], ...] = (StoreError, ValueError)
        try:
            said, letters, total = self.source.with_queue(act)
        except failures as error:
            message = "" if isinstance(error, ValueError) else str(error)
            title = self.source.settings.store.noun
            self.app.call_from_thread(
                self.notify, message or str(error), title=title, severity="error", markup=False
            )
            return
        self.app.call_from_thread(self._show, letters, total)
        if said or done:
            self.app.call_from_thread(self.notify, said or done, markup=False)

    def _show(self, loaded: list[DeadLetter], total: int) -> None:
        self.loaded, self.total = loaded, total
        letters = self.letters = [x for x in loaded if letter_matches(x, self.filter)]
        table = self.query_one("#letters", DataTable)
        row = table.cursor_row
        table.clear()
        for index, letter in enumerate(letters):
            at = datetime.fromtimestamp(letter.at).strftime("%m-%d %H:%M:%S")
            # Text, not str: a str cell is read as markup, and a topic may be "[/x]".
            reason = self.source.settings.mask(letter.reason)
            cells = (str(index), at, letter.topic or "—", str(letter.tries), reason)
            table.add_row(*(Text(cell) for cell in cells))
        shown = f"{len(loaded)} newest read" if len(loaded) < total else "all read"
        title = Text(f"Dead letters: {total:,} ({shown}) · newest first")
        if self.filter:
            title.append(f" · filter '{self.filter}': {len(letters)} shown")
        if self.read_only:
            title.append(" · read-only")
        self.query_one("#letters-title", Static).update(title)
        if letters:
            table.move_cursor(row=min(row, len(letters) - 1), animate=False)
            self._detail(table.cursor_row)
        elif loaded:
            self.query_one("#letter-detail", Static).update("None matches the filter.")
        else:
            self.query_one("#letter-detail", Static).update("No dead letter. Nothing was lost.")

    @on(DataTable.RowHighlighted, "#letters")
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail(event.cursor_row)

    def _detail(self, row: int) -> None:
        if 0 <= row < len(self.letters):
            self.query_one("#letter-detail", Static).update(
                _letter_detail(self.letters[row], self.source.settings.mask)
            )

    def _selected(self) -> DeadLetter | None:
        row = self.query_one("#letters", DataTable).cursor_row
        return self.letters[row] if 0 <= row < len(self.letters) else None

    def _refused(self) -> bool:
        if self.read_only:
            self.notify("read-only view (--read-only): it changes nothing", severity="warning")
        return self.read_only

    def action_replay(self) -> None:
        letter = self._selected()
        if letter is None or self._refused():
            return

        def replay(queue: QueueAdmin) -> str:
            if queue.replay(letter):
                return f"replayed: {letter.topic or 'the message'} is back on the queue"
            return "it was already gone (replayed or purged elsewhere)"

        self._run(replay, "")

    def action_replay_shown(self) -> None:
        """Without a filter: every dead letter there is. With one: those it shows."""
        if self._refused():
            return
        if not self.filter:

            def replay_all(queue: QueueAdmin) -> str:
                return f"replayed {queue.replay_all()} dead letter(s)"

            self._ask(f"Replay all {self.total:,} dead letters?", replay_all)
            return
        chosen = list(self.letters)
        if not chosen:
            self.notify("the filter shows no dead letter")
            return

        def replay_chosen(queue: QueueAdmin) -> str:
            replayed = sum(1 for letter in chosen if queue.replay(letter))
            gone = len(chosen) - replayed
            return f"replayed {replayed} dead letter(s)" + (
                f"; {gone} already gone (replayed or purged elsewhere)" if gone else ""
            )

        among = f" of the {len(self.loaded):,} newest" if len(self.loaded) < self.total else ""
        self._ask(
            f"Replay the {len(chosen):,} dead letter(s){among} the filter '{self.filter}' shows?",
            replay_chosen,
        )

    def action_purge(self) -> None:
        if self._refused():
            return

        def purge(queue: QueueAdmin) -> str:
            return f"purged {queue.purge_dead_letters()} dead letter(s)"

        self._ask(f"Delete all {self.total:,} dead letters for good?", purge)

    def _ask(self, question: str, action: Callable[[QueueAdmin], str]) -> None:
        if not self.letters:
            self.notify("no dead letter shown (g reloads the list)")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._run(action, "")

        self.app.push_screen(ConfirmScreen(question), answered)
