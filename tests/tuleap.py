"""Tuleap beside the tests: a stand-in for its task process (``tests/bin/tuleap``,
which keeps the contract of ``tuleap queue:task-worker-process``) and its messages."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import psutil

from tests.pool import REPO, Pool

TASK = ("--task-command", "tuleap queue:task-worker-process")


class Tuleap:
    """The stand-in's records and the directory it runs in (Tuleap's source root)."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "usr-share-tuleap"
        self.root.mkdir()
        self.records = tmp_path / "records"
        self.records.mkdir()
        self.env = {
            "PATH": f"{REPO / 'tests' / 'bin'}:{os.environ['PATH']}",
            "TULEAP_STANDIN_RECORDS": str(self.records),
        }

    def runs(self, kind: str = "start") -> list[dict[str, object]]:
        return [json.loads(p.read_text()) for p in sorted(self.records.glob(f"*.{kind}.json"))]

    def runs_of(self, message_id: str, kind: str = "start") -> list[dict[str, object]]:
        return [r for r in self.runs(kind) if r["id"] == message_id]

    def kill_detached(self) -> None:
        """Kills the ``setsid env -i sleep`` daemons its runs started (``detached``) that
        still run: one that escaped its worker and the pool is no child of theirs."""
        for run in self.runs():
            if "detached_pid" not in run:
                continue
            with contextlib.suppress(psutil.Error):
                daemon = psutil.Process(int(str(run["detached_pid"])))
                # Started by that run, not a process that took its pid since.
                if daemon.name() == "sleep" and daemon.create_time() >= float(str(run["at"])) - 1:
                    daemon.kill()


def php_message(topic: str, payload: str, enqueue_ts: float, queued_total: int = 0) -> bytes:
    """A message byte for byte as Tuleap's PHP front end writes it (json_encode)."""
    return (
        f'{{"event_name":"{topic}","payload":{payload},'
        f'"_enqueue_ts":{enqueue_ts:.6f},"_queued_total":{queued_total}}}'
    ).encode()


def start_db_pool(
    pools: list[Pool], tmp_path: Path, tuleap: Tuleap, config: Path, *args: str
) -> Pool:
    pool = Pool(tmp_path, config, *TASK, "--task-dir", str(tuleap.root), *args, env=tuleap.env)
    pools.append(pool.start())
    pool.wait_for_log(r"Start service")  # tuitop's tables are made by then
    return pool
