"""Second reading of issue 22: defects found by attacking its changes, each a test."""

from __future__ import annotations

import time
from pathlib import Path

from tests.pool import REPO, Pool, run_tuitop, write_config
from tests.test_db_beside_tuleap import WORKER, TuleapWorker, fill, queue, topics_taken, tuleap
from tuitop.backends.db.queue import DbQueue
from tuitop.config import DatabaseSettings
from tuitop.redisserver import EmbeddedRedis

__all__ = ["queue", "tuleap"]  # fixtures


def test_a_retry_placed_beside_rows_placed_before_waits_for_no_lock(
    queue: DbQueue, tuleap: TuleapWorker, database: DatabaseSettings
) -> None:
    """Placed rows get consecutive ids: Tuleap's worker then holds the first of them,
    and the next placement lands right before the second — on the held row's own id."""
    fill(database, "a", "b", "c", "tail")
    first = queue.take(WORKER, 2)[0]
    for message in first:
        assert queue.fail(WORKER, message, "boom") == "retried"
    [c], _, _ = queue.take(WORKER, 1)
    time.sleep(0.05)
    assert queue.move_due() == 2  # a, b: just before "tail", consecutive ids
    tuleap.take()  # "a": Tuleap's task runs
    assert queue.fail(WORKER, c, "boom") == "retried"
    time.sleep(0.05)
    started = time.monotonic()
    assert queue.move_due() == 1
    assert time.monotonic() - started < 1.0  # no lock waited for
    assert topics_taken(queue) == ["c", "b", "tail"]


def test_a_take_of_the_rows_behind_one_tuleaps_worker_holds_waits_for_no_lock(
    queue: DbQueue, tuleap: TuleapWorker, database: DatabaseSettings
) -> None:
    """A take's DELETE of the rows it locked reads them by a plan the optimizer picks:
    a scan of a small table reads (and waits for) the row Tuleap's worker holds."""
    fill(database, "held", "a", "b", "c")
    tuleap.take()
    started = time.monotonic()
    assert topics_taken(queue) == ["a", "b", "c"]
    assert time.monotonic() - started < 1.0


def skewed_env(tmp_path: Path, offset: float) -> dict[str, str]:
    """The environment of a process whose wall clock runs ``offset`` s off this host's
    (another host's, as a test can make one: a ``sitecustomize``)."""
    skew = tmp_path / "skew"
    skew.mkdir(exist_ok=True)
    (skew / "sitecustomize.py").write_text(
        f"import time\n_time = time.time\ntime.time = lambda: _time() + {offset}\n"
    )
    return {"PYTHONPATH": f"{skew}:{REPO}"}


def test_a_pool_whose_clock_is_ahead_of_the_senders_obeys_ctl_on_redis(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis
) -> None:
    """The same on Redis, where the pool judged a command's age by the sender's wall
    clock against its own: a pool on a host a few minutes ahead refused every command."""
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    pool = Pool(
        tmp_path, config, "--pool-name", "skewed", "--handlers", "tests.handlers_for_tests",
        env=skewed_env(tmp_path, 300),
    )  # fmt: skip
    pools.append(pool.start())
    pool.wait_for_log(r"Start service")
    done = run_tuitop("--config", str(config), "ctl", "scale", "+1")
    assert done.returncode == 0 and "workers 1 → 2" in done.stdout, done.stdout + done.stderr
