"""What became of a message: the names every part counts and says, written once.

A :class:`~enum.StrEnum`, so that an outcome is the very string the stats store and the
views read (``"retried" == Outcome.RETRIED``): the wire and the stored counters do not
change with it.
"""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    """An outcome of a message, as counted in the stats (:mod:`tuitop.stats`) and said
    in the log."""

    DONE = "done"
    """Its job ran to its end."""
    FAILED = "failed"
    """Its job failed (then RETRIED or DEAD says where the message went)."""
    TIMEDOUT = "timedout"
    """Its job ran past the time limit and was killed (then RETRIED or DEAD)."""
    UNANSWERED = "unanswered"
    """Its job's peer did not answer in time: the job may have done its work (a mail
    sent twice), so it is retried like a failure (then RETRIED or DEAD)."""
    RETRIED = "retried"
    """It waits for a retry, with one try more."""
    DEAD = "dead"
    """It was given up: it is in the dead letters, with why."""
    ENQUEUED = "enqueued"
    """A producer pushed it (counted by tuitop's own producers)."""
    GONE = "gone"
    """Not a fate of the message: the worker no longer held it (a pool recovered it
    meanwhile), so the move did nothing. Never counted."""


FATES = (Outcome.RETRIED, Outcome.DEAD)
"""Where a message that came back from a worker goes (:meth:`RetryPolicy.decide`)."""
COUNTED = tuple(outcome for outcome in Outcome if outcome is not Outcome.GONE)
"""The outcomes the stats count, in their order."""
