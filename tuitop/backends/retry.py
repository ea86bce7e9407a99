"""The one rule of what becomes of a message that comes back from a worker: retried
later, or given up into the dead letters, and why. Pure: both stores carry out the
:class:`Decision` it makes (as dramatiq decides retries once, above every broker, in
``middleware/retries.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from tuitop.message import Message
from tuitop.outcome import Outcome

MAX_REQUEUES = 3
"""Tuleap's limit: a message may come back this many times, then it is given up."""


@dataclass(frozen=True)
class Decision:
    """Where a message that failed goes, and what the store writes with it."""

    outcome: Outcome
    """:attr:`Outcome.RETRIED` or :attr:`Outcome.DEAD`."""
    tries: int
    """The try count the retry carries (``queued_total`` + 1); a dead letter keeps the
    message's own."""
    delay: float = 0.0
    """Seconds the retry waits, by the store's clock."""
    why: str = ""
    """A dead letter's reason: the failure's, and why it is not retried."""

    @property
    def retried(self) -> bool:
        return self.outcome is Outcome.RETRIED


@dataclass(frozen=True)
class RetryPolicy:
    """How long a returning message waits, and how many returns it gets."""

    base_delay: float = 5.0
    max_requeues: int = MAX_REQUEUES

    def delay(self, queued_total: int) -> float:
        """Seconds to wait before try ``queued_total`` + 1 (Tuleap: 5, 10, 20, 40 s)."""
        return float(self.base_delay * 2 ** min(max(queued_total - 1, 0), 3))

    def decide(self, message: Message, reason: str, *, retryable: bool) -> Decision:
        """What becomes of ``message``, which failed for ``reason``: dead at once when it
        may not be retried or cannot be read (a retry would fail the same way), dead
        past ``max_requeues`` tries, else retried after :meth:`delay`."""
        tries = message.queued_total + 1
        if not retryable:
            return Decision(Outcome.DEAD, tries, why=reason)
        if message.problem is not None:
            return Decision(
                Outcome.DEAD, tries, why=f"{reason}; unusable message: {message.problem}"
            )
        if tries > self.max_requeues:
            return Decision(Outcome.DEAD, tries, why=f"{reason}; given up after {tries} tries")
        return Decision(Outcome.RETRIED, tries, delay=self.delay(tries))


def backoff(previous: float, cap: float) -> float:
    """The next wait after a failure to reach a store: 1 s, then twice the one before,
    ``cap`` at most."""
    return min(max(previous * 2, 1.0), cap)


def not_written_back(reason: str, error: BaseException) -> str:
    """A dead letter's reason when a retry was decided but the message could not be
    written back with its new try count (a store that rewrites the message's bytes)."""
    return f"{reason}; cannot be written back for a retry: {error}"
