"""The chaos campaign's short run (bench/chaos.py): two real pools on one Redis, a stream
of notifications through a real SMTP server, and meanwhile workers killed every 2 s,
config saves every 5 s, Redis killed and restarted, the SMTP server down 10 s, a whole
host killed and started again, a worker frozen past its heartbeat. Nothing may be lost,
and nothing run twice but what a worker held as it was killed."""

from __future__ import annotations

import pytest

from bench.chaos import run_campaign


@pytest.mark.timeout(600)
def test_the_short_chaos_run_loses_nothing() -> None:
    report = run_campaign(messages=3000, rate=40.0)
    assert report.lost == [], f"lost: {report.lost[:20]} (events: {report.events})"
    assert report.delivered + report.dead + len(report.unconfirmed) == report.pushed
    # Run twice only what a worker held as it was killed or frozen; dead-lettered only
    # what kills and the relay's outage cost Tuleap's 3 tries.
    assert report.unexplained == [], {a: report.duplicates[a] for a in report.unexplained}
    assert report.unexplained_dead == [], {
        a: (report.dead_reasons[a], report.held.get(a), report.relay_failed.get(a))
        for a in report.unexplained_dead
    }
    kinds = " ".join(event.what for event in report.events)
    for happened in ("SIGKILL worker", "config saved", "Redis killed", "SMTP server down",
                     "whole host killed", "frozen (SIGSTOP)"):  # fmt: skip
        assert happened in kinds, happened
