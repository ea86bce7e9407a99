"""One snapshot for scripts and for a glance: ``tuitop top --once [--json]``.

:func:`snapshot_json` is a stable, plain JSON object (times in epoch seconds, durations in
seconds, ``null`` for what is not known); fields may be added, none renamed or removed
without saying so in README. :func:`snapshot_text` is a few lines for a person, not for
parsing. Neither holds a password: a store's address is its host and port (or database
name), and heartbeats carry no credential.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from tuitop.durations import seconds
from tuitop.outcome import Outcome
from tuitop.snapshot import Snapshot
from tuitop.stats import Percentiles, WindowStats

SCHEMA = 1
"""The JSON's version: raised when a field changes meaning or goes."""


def _percentiles(values: Percentiles) -> dict[str, Any]:
    return dataclasses.asdict(values)


def _window(window: WindowStats) -> dict[str, Any]:
    return {
        "seconds": window.seconds,
        "counts": dict(window.counts),
        "wait": _percentiles(window.wait),
        "end_to_end": _percentiles(window.end_to_end),
        "lanes": {
            name: {"done": lane.done, "wait": _percentiles(lane.wait)}
            for name, lane in window.lanes.items()
        },
    }


def snapshot_json(snapshot: Snapshot, store: str) -> dict[str, Any]:
    """``snapshot`` as JSON: queue, lanes, pools, workers, latency (notifications' wait
    and end to end over 1 and 5 minutes, each lane's wait), rates over the last complete
    10 s, and per topic over 5 minutes. ``store`` says where it was read."""
    queue = snapshot.queue
    recent = snapshot.last_ten_seconds
    return {
        "schema": SCHEMA,
        "taken_at": snapshot.taken_at,
        "store": store,
        "queue": {
            "waiting": queue.waiting,
            "waiting_capped": queue.waiting_capped,
            "processing": queue.processing,
            "delayed": queue.delayed,
            "dead_letters": queue.dead_letters,
            "oldest_age": queue.oldest_age,
            "next_retry_in": queue.next_retry_in,
        },
        "rates": {
            outcome: recent.rate(outcome)
            for outcome in (Outcome.ENQUEUED, Outcome.DONE, Outcome.FAILED)
        },
        "lanes": [dataclasses.asdict(lane) for lane in snapshot.lanes],
        "pools": [dataclasses.asdict(pool) for pool in snapshot.pools],
        "workers": [dataclasses.asdict(worker) for worker in snapshot.workers],
        "latency": {
            "1m": _window(snapshot.last_minute),
            "5m": _window(snapshot.last_five_minutes),
        },
        "topics": {
            topic: {
                "n": stats.count,
                "failed": stats.failed,
                "wait": _percentiles(stats.wait),
                "run": _percentiles(stats.run),
            }
            for topic, stats in snapshot.last_five_minutes.topics.items()
        },
    }


def snapshot_text(snapshot: Snapshot, store: str) -> str:
    """A few lines: the queue, the rates, the notifications' latency, each pool, the
    workers by state."""
    queue = snapshot.queue
    recent, minute = snapshot.last_ten_seconds, snapshot.last_minute
    taken = time.strftime("%H:%M:%S", time.localtime(snapshot.taken_at))
    lines = [
        f"tuitop · {store} · {taken}",
        f"queue: waiting {queue.waiting:,}{'+' if queue.waiting_capped else ''} · processing "
        f"{queue.processing:,} · oldest {seconds(queue.oldest_age)} · delayed "
        f"{queue.delayed:,} · dead letters {queue.dead_letters:,}",
        f"rates: in {recent.rate('enqueued'):.1f}/s · done {recent.rate('done'):.1f}/s · "
        f"failed {minute.counts.get('failed', 0)}/min",
        f"notifications, 1 min: wait p50 {seconds(minute.wait.p50)} p99 "
        f"{seconds(minute.wait.p99)} · end to end p50 {seconds(minute.end_to_end.p50)} "
        f"p99 {seconds(minute.end_to_end.p99)}",
    ]
    for pool in snapshot.pools:
        flags = [flag for flag, on in (("paused", pool.paused), ("stopping", pool.stopping)) if on]
        if pool.held:
            flags.append(pool.held)
        if pool.config_error:
            flags.append(f"config error: {pool.config_error}")
        lines.append(
            f"pool {pool.name}@{pool.host}: workers {pool.running}/{pool.wanted}"
            + (f" ({', '.join(flags)})" if flags else "")
        )
    if not snapshot.pools:
        lines.append("no pool is running")
    states: dict[str, int] = {}
    for worker in snapshot.workers:
        states[worker.state] = states.get(worker.state, 0) + 1
    lines.append(
        f"workers: {len(snapshot.workers)}"
        + (" (" + ", ".join(f"{n} {state}" for state, n in sorted(states.items())) + ")")
        * bool(states)
    )
    # Names and errors come from the store, which anyone with its password may write:
    # no control character (a terminal's escape sequence) reaches the terminal.
    return "\n".join("".join(c if c.isprintable() else "?" for c in line) for line in lines)
