"""The two jobs every pool runs, the same Python for every pool.

* ``noop``: nothing;
* ``roundtrip``: one Redis round trip of bookkeeping, ``INCR`` of :data:`COUNTER_KEY` on
  the benchmark's Redis (database 0), on a connection the job's process opens once and
  keeps (a new one after a fork: a socket is never shared between processes).

:func:`run` also appends the job's wait (its start minus the enqueue time it carries) to
the file ``BENCH_PEERS_WAITS`` names, when it carries one: one ``write`` of one line
(``<wait> <enqueued> <pid>``: seconds, seconds since the epoch, the job's process), whole
under ``O_APPEND`` whatever other process appends at once.

Imports redis-py only: it runs in every peer's virtualenv.
"""

from __future__ import annotations

import os
import time

import redis

JOBS = ("noop", "roundtrip")
COUNTER_KEY = "bench:peers:done"
"""Database 0: how many ``roundtrip`` jobs have run."""
PORT_ENV = "BENCH_REDIS_PORT"
DB_ENV = "BENCH_REDIS_DB"
WAITS_ENV = "BENCH_PEERS_WAITS"
HOST = "127.0.0.1"

_client: redis.Redis | None = None
_client_pid = 0


def port() -> int:
    """The benchmark Redis' port (``BENCH_REDIS_PORT``; there is no default)."""
    return int(os.environ[PORT_ENV])


def broker_db() -> int:
    """The database producers write to (``BENCH_REDIS_DB``, 0 unless staging)."""
    return int(os.environ.get(DB_ENV, "0"))


def counter_client() -> redis.Redis:
    """This process' connection to database 0, opened on first use."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis(host=HOST, port=port(), db=0)
        _client_pid = os.getpid()
    return _client


def record_wait(enqueued: float) -> None:
    """Appends now minus ``enqueued`` (seconds), ``enqueued`` and this process' id to the
    waits file, if one is named."""
    wait = time.time() - enqueued
    path = os.environ.get(WAITS_ENV)
    if not path:
        return
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, f"{wait!r} {enqueued!r} {os.getpid()}\n".encode())
    finally:
        os.close(descriptor)


def run(job: str, enqueued: float | None = None) -> None:
    """Runs ``job`` (one of :data:`JOBS`); records its wait first when ``enqueued`` is set."""
    if enqueued is not None:
        record_wait(enqueued)
    if job == "roundtrip":
        counter_client().incr(COUNTER_KEY)
    elif job != "noop":
        raise ValueError(f"unknown job {job!r}")
