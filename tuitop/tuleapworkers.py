"""Tuleap's own workers, as far as tuitop has to know them: to take over their messages.

Tuleap's worker N (``src/utils/worker.php --id=N``, systemd's ``tuleap-worker@N``) keeps
what it has taken in ``app_user_events-processing-N`` and re-queues it at its next start;
a worker stopped to hand over to tuitop never starts again, so those messages would stay
there. Its pid file (``/var/run/tuleap/worker.pid`` for N = 0, ``worker_N.pid`` otherwise)
says whether it still runs on this host.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import redis

from tuitop import keys
from tuitop.osutil import process_running

PID_DIRECTORY = "/var/run/tuleap"


@dataclass(frozen=True)
class TuleapList:
    """The processing list of Tuleap's worker ``number`` and what it holds."""

    number: int
    messages: int

    @property
    def worker_id(self) -> str:
        """Its id as tuitop's queue names it: the list is ``processing_list(worker_id)``."""
        return str(self.number)


def tuleap_lists(client: redis.Redis) -> Iterator[TuleapList]:
    """Every non-empty processing list of a Tuleap worker (a number after the prefix;
    tuitop's own ids are ``pool/slot#pid``), by SCAN: it never blocks Redis."""
    prefix = keys.processing_list("")
    for key in client.scan_iter(match=keys.PROCESSING_PATTERN, count=1000):
        suffix = key.decode("utf-8", "replace").removeprefix(prefix)
        if suffix.isdigit():
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
