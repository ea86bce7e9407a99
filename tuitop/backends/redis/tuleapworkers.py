"""Tuleap's own workers, as far as tuitop has to know them: to take over their messages.

Tuleap's worker N (``src/utils/worker.php --id=N``, systemd's ``tuleap-worker@N``) keeps
what it has taken in ``app_user_events-processing-N`` and re-queues it at its next start;
a worker stopped to hand over to tuitop never starts again, so those messages would stay
there. Its pid file (``/var/run/tuleap/worker.pid`` for N = 0, ``worker_N.pid`` otherwise)
says whether it still runs on this host.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import cast

import redis

from tuitop.backends.base import TULEAP_HOLD_LIMIT
from tuitop.backends.redis import keys
from tuitop.osutil import process_running

PID_DIRECTORY = "/var/run/tuleap"
HOLD_LIMIT = TULEAP_HOLD_LIMIT


@dataclass(frozen=True)
class TuleapList:
    """The processing list of Tuleap's worker ``number`` and what it holds."""

    number: int
    messages: int

    @property
    def worker_id(self) -> str:
        """Its id as tuitop's queue names it: the list is ``processing_list(worker_id)``."""
        return str(self.number)


def processing_lists(client: redis.Redis) -> list[bytes]:
    """The keys of every processing list, Tuleap's workers' and tuitop's, by SCAN: it never
    blocks Redis (its cost grows with the keyspace: a caller that looks often keeps it)."""
    # Lists only: a key of another type under the prefix is nobody's (its LLEN would fail).
    return [
        bytes(key)
        for key in client.scan_iter(match=keys.PROCESSING_PATTERN, count=1000, _type="list")
    ]


def tuleap_lists(client: redis.Redis, lists: Iterable[bytes] | None = None) -> Iterator[TuleapList]:
    """Every non-empty processing list of a Tuleap worker (a number after the prefix;
    tuitop's own ids are ``pool/slot#pid``), among ``lists`` (the keys
    :func:`processing_lists` found; None: a SCAN now)."""
    prefix = keys.processing_list("")
    for key in processing_lists(client) if lists is None else lists:
        suffix = key.decode("utf-8", "replace").removeprefix(prefix)
        if suffix.isascii() and suffix.isdigit():  # ASCII: "²".isdigit() too
            length = int(client.llen(key))
            if length:
                yield TuleapList(int(suffix), length)


def running_pid(number: int, directory: str = PID_DIRECTORY) -> int | None:
    """The pid of Tuleap's worker ``number`` when its pid file names a live process on
    this host, else None."""
    name = "worker.pid" if number == 0 else f"worker_{number}.pid"
    try:
        with open(os.path.join(directory, name)) as handle:
            pid = int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and process_running(pid) else None


def left_behind(
    client: redis.Redis, hold_limit: float = HOLD_LIMIT, lists: Iterable[bytes] | None = None
) -> list[TuleapList]:
    """The lists of Tuleap's workers that are gone: no pid file on this host names a live
    worker of theirs, and their content has not changed for ``hold_limit`` seconds (by
    Redis' clock, as every pool on every host sees it: their first sight of each content is
    kept in Redis). A live Tuleap worker on another host changes its list within its task
    limit, so it is never taken for gone."""
    now = float(client.time()[0])
    seen = {
        key.decode("utf-8", "replace"): value.decode("utf-8", "replace")
        for key, value in cast(dict[bytes, bytes], client.hgetall(keys.TULEAP_LISTS)).items()
    }
    gone: list[TuleapList] = []
    present = set()
    for found in tuleap_lists(client, lists):
        key = keys.processing_list(found.worker_id)
        present.add(key)
        oldest = cast(bytes | None, client.lindex(key, -1)) or b""
        content = hashlib.sha1(f"{found.messages}:".encode() + oldest).hexdigest()
        since = seen.get(key, "")
        if not since.startswith(f"{content}|"):
            client.hset(keys.TULEAP_LISTS, key, f"{content}|{now}")
            continue
        if now - float(since.partition("|")[2]) > hold_limit and running_pid(found.number) is None:
            gone.append(found)
    stale = [key for key in seen if key not in present]
    if stale:
        client.hdel(keys.TULEAP_LISTS, *stale)
    return gone
