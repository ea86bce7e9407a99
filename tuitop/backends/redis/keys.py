"""Every Redis key tuitop reads or writes, in one place.

The first group is Tuleap's wire format and must not change: a Tuleap front end pushes into
``QUEUE`` and a Tuleap worker would use ``processing_list(N)``. The rest is tuitop's own
bookkeeping, under the ``tuitop:`` prefix except where it belongs beside the queue.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from tuitop.lanes import LANE_PREFIX as LANE_PREFIX
from tuitop.lanes import TULEAP_QUEUE, lane_queue

# --- Tuleap's (wire-compatible) ------------------------------------------------------
QUEUE = TULEAP_QUEUE
"""The list producers LPUSH into and workers take from (at the right end)."""


def processing_list(worker_id: str) -> str:
    """The list where ``worker_id`` keeps the messages it has taken and not yet finished.

    Tuleap names it after the worker's number; tuitop's worker ids are ``host/slot`` so that
    pools on several hosts can share one queue.
    """
    return f"{QUEUE}-processing-{worker_id}"


PROCESSING_PATTERN = f"{QUEUE}-processing-*"


def names_in(members: Iterable[bytes]) -> list[str]:
    """The members of a set of names tuitop writes (pools, worker ids, lanes), sorted. One
    that is not UTF-8 was written by something else (anyone may write to the Redis) and is
    left out: see :func:`not_names_in` to take it out."""
    names = []
    for member in members:
        with contextlib.suppress(UnicodeDecodeError):
            names.append(member.decode())
    return sorted(names)


def not_names_in(members: Iterable[bytes]) -> list[bytes]:
    """The members :func:`names_in` leaves out."""
    found = []
    for member in members:
        try:
            member.decode()
        except UnicodeDecodeError:
            found.append(member)
    return found


# --- tuitop's --------------------------------------------------------------------------


lane_list = lane_queue
"""The list a lane's messages wait in is named after the lane's queue."""


TULEAP_LISTS = "tuitop:tuleap-lists"
"""Hash: each processing list of a Tuleap worker → what it held and since when (Redis
time), to tell a list left by a worker that is gone (tuitop.backends.redis.tuleapworkers)."""

LANES = "tuitop:lanes"
"""Sorted set of the lanes pools serve; score: when a pool last said it serves it (Redis
time), so that a lane no pool serves any more is moved back to ``QUEUE``."""

DELAYED = f"{QUEUE}-delayed"
"""Sorted set of messages waiting for their retry time (score: when they are due)."""

DEAD_LETTERS = f"{QUEUE}-dead"
"""List of messages past their last try or unusable, each wrapped with the reason."""

WORKERS = "tuitop:workers"
"""Set of the ids of every worker that may hold a processing list (live or not yet recovered)."""


def heartbeat(worker_id: str) -> str:
    """Hash describing a worker (host, pid, state ...), written when it changes; whether
    the worker lives is said by :func:`worker_alive` and its pool's hash, not by this one
    (it lives ``WORKER_HASH_SECONDS`` after its last write, and is deleted when the
    worker leaves or is recovered)."""
    return f"tuitop:worker:{worker_id}"


def worker_alive(worker_id: str) -> str:
    """Set with a TTL (the heartbeat's) by a worker each time it writes its hash: alive
    while it lives, or while the pool of the worker lists it in its own hash (``workers``):
    so that an idle worker, whose hash does not change, costs the store nothing."""
    return f"tuitop:worker:{worker_id}:alive"


def pool_of(worker_id: str) -> str:
    """The pool a worker id (``pool/slot#pid``) belongs to: pool names hold no ``/``."""
    return worker_id.partition("/")[0]


def worker_lease(worker_id: str) -> str:
    """Set by a worker when it starts, deleted with its processing list when anyone
    recovers it: a worker that finds it gone knows what it holds is elsewhere now (it was
    frozen, or cut off, past its heartbeat)."""
    return f"tuitop:worker:{worker_id}:lease"


WORKER_HASH_SECONDS = 3600
"""How long a worker's hash outlives its last write (a worker rewrites it at least every
``WORKER_HASH_REFRESH`` s): only what no one deleted (a host gone with no pool left to
recover it) is left this long."""
WORKER_HASH_REFRESH = 600


CONFIG = "tuitop:config"
"""Hash of the configuration in force (async scope, log level, workers) with a version
number, so that producers in other processes follow a change without reading files."""

POOLS = "tuitop:pools"
"""Set of the names of pools that registered."""


def pool(pool_name: str) -> str:
    """Hash describing a live pool (host, pid, wanted workers, config); expires with it."""
    return f"tuitop:pool:{pool_name}"


def control(pool_name: str) -> str:
    """List of the commands sent to a pool (tuitop.control), oldest at the left; expires a
    minute after the last one sent."""
    return f"tuitop:pool:{pool_name}:control"


def control_reply(command_id: str) -> str:
    """List holding a pool's reply to the command ``command_id``; expires in a minute."""
    return f"tuitop:control:reply:{command_id}"


def push_marker(token: str) -> str:
    """Set with a push, for ``PUSH_MARKER_SECONDS``: whether a push whose reply was lost
    happened (tuitop.notify)."""
    return f"tuitop:pushed:{token}"


PUSH_MARKER_SECONDS = 300


def stats_bucket(bucket_start: int) -> str:
    """Hash of counters and latency histograms for the 10 s starting at ``bucket_start``."""
    return f"tuitop:stats:{bucket_start}"
