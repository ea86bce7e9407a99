"""`tuitop demo --no-ui`: everything on the embedded default; Ctrl-C stops it all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from tests.pool import REPO, wait_until


def test_demo_runs_and_ctrl_c_stops_it_all(tmp_path: Path) -> None:
    output = tmp_path / "output.txt"
    with open(output, "wb") as sink:
        # Its own session, so that the Ctrl-C below reaches its whole process group, as a
        # terminal's does.
        demo = subprocess.Popen(
            [sys.executable, "-m", "tuitop", "demo", "--no-ui", "--rate", "40"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: output.read_text().count("End notification") >= 20,
            timeout=60,
            what="20 notifications delivered",
        )
        family = psutil.Process(demo.pid).children(recursive=True)
        assert any("redis-server" in " ".join(p.cmdline()) for p in family)
        os.killpg(demo.pid, signal.SIGINT)
        assert demo.wait(timeout=60) == 0
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    text = output.read_text()
    summary = re.search(
        r"(\d+) notifications and (\d+) of Tuleap's jobs queued, (\d+) done, (\d+) still "
        r"queued, (\d+) dead letters; (\d+) mails received by the local SMTP server",
        text,
    )
    assert summary is not None, text[-2000:]
    notifications, jobs, done, left, dead, mails = (int(group) for group in summary.groups())
    assert mails >= 20 and jobs >= 2
    assert done + left == notifications + jobs  # every message done or still queued
    assert dead == 0
    # Both kinds ran: mails by tuitop's handler, Tuleap's jobs by the stand-in task process.
    assert text.count("task stdout: demo task: tuleap.") >= 1
    assert "Traceback" not in text
    config = re.search(r"config\s+(\S+)", text)
    assert config is not None and not Path(config.group(1)).exists()  # cleaned up
    _gone, alive = psutil.wait_procs(family, timeout=10)
    assert alive == []
