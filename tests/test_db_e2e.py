"""End to end on Tuleap's database queue: the real ``tuitop --no-ui`` serving the
``async_events`` of a real MariaDB server, rows inserted the way Tuleap's front end
inserts them, run through the stand-in of Tuleap's task process (tests/bin/tuleap)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.pool import Pool, run_tuitop, skewed_env, wait_until
from tests.tuleap import TASK, Tuleap, start_db_pool
from tests.tuleapdb import connect, count, database_inc, enqueue, everything_done, fresh_database
from tuitop.config import DatabaseSettings, load_config
from tuitop.embedded.mariadbserver import EmbeddedMariaDB
from tuitop.procmeter import ProcessMeter
from tuitop.tui.source import SnapshotSource

FAST_RETRY = ("--retry-delay", "0.05")
QUICK_STOP = ("--grace", "1")


@pytest.fixture
def tuleap(tmp_path: Path) -> Tuleap:
    return Tuleap(tmp_path)


def test_tuleaps_rows_run_once_each_with_tuleaps_stdin(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, database: DatabaseSettings
) -> None:
    pool = start_db_pool(pools, tmp_path, tuleap, database_inc(tmp_path, database, workers=3))
    pool.wait_for_log(r"Start service", count=3)
    topics = ("tuleap.tracker.artifact", "tuleap.git.hooks.post-receive", "tuleap.fts.index-item")
    payloads = {}
    for i in range(30):
        # As Tuleap's Psl\Json\encode writes it: slashes and non-ASCII as they are.
        payloads[f"m{i}"] = f'{{"id":"m{i}","path":"repo/x.git","who":"Jérôme {i}"}}'
        enqueue(database, topics[i % 3], payloads[f"m{i}"])
    wait_until(lambda: len(tuleap.runs("end")) >= 30, 60, "30 tasks ended")
    wait_until(lambda: everything_done(database), 10, "every row acked")
    runs = tuleap.runs()
    assert sorted(str(run["id"]) for run in runs) == sorted(payloads)  # once each
    for run in runs:
        index = int(str(run["id"])[1:])
        expected = f'{{"event_name":"{topics[index % 3]}","payload":{payloads[run["id"]]}}}'
        assert bytes.fromhex(str(run["stdin_hex"])) == expected.encode()
        assert run["env"]["SHELL_VERBOSITY"] == "1"  # type: ignore[index]
        assert run["cwd"] == str(tuleap.root)
    assert pool.stop() == 0
    log = pool.log()
    assert f"the database queue at mysql://{database.user}@{database.host}" in log
    assert database.password.reveal() not in log + pool.output()


def test_a_task_reads_a_payload_as_tuleaps_worker_writes_it_again(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, database: DatabaseSettings
) -> None:
    """Tuleap's worker decodes the row's payload into PHP arrays and encodes it again
    (Psl\\Json): an empty object is a list, keys "0".."n-1" a list, a 20-digit integer a
    string, 1.50 is 1.5, U+2028 escaped. The task gets those bytes, and PWD as Symfony's
    shell sets it."""
    pool = start_db_pool(pools, tmp_path, tuleap, database_inc(tmp_path, database, workers=1))
    row = (
        '{"id": "odd", "options": {}, "ids": {"0": 7, "1": 8}, '
        '"big": 12345678901234567890, "ratio": 1.50, "note": "a\u2028b/c"}'
    )
    enqueue(database, "tuleap.git.repository-change", row)
    wait_until(lambda: tuleap.runs_of("odd", "end"), 30, "the task ran")
    [run] = tuleap.runs_of("odd")
    assert bytes.fromhex(str(run["stdin_hex"])) == (
        b'{"event_name":"tuleap.git.repository-change","payload":{"id":"odd","options":[],'
        b'"ids":[7,8],"big":"12345678901234567890","ratio":1.5,"note":"a\\u2028b/c"}}'
    )
    assert run["env"]["PWD"] == os.path.realpath(tuleap.root)  # type: ignore[index]
    assert pool.stop() == 0


def test_a_failing_task_is_retried_then_dead_lettered_and_replayed(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, database: DatabaseSettings
) -> None:
    config = database_inc(tmp_path, database, workers=1)
    pool = start_db_pool(pools, tmp_path, tuleap, config, *FAST_RETRY)
    enqueue(database, "tuleap.git.hooks.post-receive",
            {"id": "bad", "standin": {"exit": 3, "stderr": "PHP Fatal error: boom"}})  # fmt: skip
    wait_until(lambda: count(database, "tuitop_dead_letters") == 1, 30, "a dead letter")
    assert len(tuleap.runs_of("bad")) == 4  # Tuleap's 3 returns, then given up
    listed = run_tuitop("dead-letters", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    assert "tuleap.git.hooks.post-receive" in listed.stdout and "status 3" in listed.stdout
    shown = run_tuitop("dead-letters", "show", "0", "--config", str(config))
    assert "PHP Fatal error: boom" in shown.stdout and "given up after 4 tries" in shown.stdout
    enqueue(database, "tuleap.fts.index-item", {"id": "fine"})
    wait_until(lambda: tuleap.runs_of("fine", "end"), 20, "a good one after")
    replayed = run_tuitop("dead-letters", "replay", "--all", "--config", str(config))
    assert "replayed 1 dead letter(s)" in replayed.stdout
    wait_until(lambda: len(tuleap.runs_of("bad")) == 5, 20, "the replayed one run again")
    assert pool.stop() == 0


def test_a_worker_killed_mid_task_loses_nothing(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, database: DatabaseSettings
) -> None:
    pool = start_db_pool(
        pools,
        tmp_path,
        tuleap,
        database_inc(tmp_path, database, workers=1),
        *FAST_RETRY,
        *QUICK_STOP,
    )
    enqueue(database, "tuleap.tracker.artifact", {"id": "hang", "standin": {"sleep": 600}})
    run = wait_until(lambda: tuleap.runs_of("hang"), 20, "the long task started")[0]
    worker = psutil.Process(int(str(run["ppid"])))
    assert count(database, "tuitop_processing") == 1  # in that worker's hands, not locked
    worker.kill()
    # Recovered at once by the pool, one try more, run again by the next worker.
    wait_until(lambda: len(tuleap.runs_of("hang")) == 2, 30, "the task run again")
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT nb_added_in_queue FROM tuitop_processing")
        assert cursor.fetchall() == ((1,),)
    pool.wait_for_log(r"Recovered 1 message\(s\) of worker")
    assert pool.stop() == 0
    # Stopped past its grace, the task was cut: back to wait for its retry, not lost.
    assert count(database, "tuitop_delayed") == 1


def test_a_task_past_the_time_limit_runs_once_and_is_dead_lettered(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, database: DatabaseSettings
) -> None:
    """As Tuleap's worker drops it (``TaskWorkerTimedOutException``), never run again;
    tuitop keeps it as a dead letter, with why, and counts it timedout."""
    pool = start_db_pool(
        pools,
        tmp_path,
        tuleap,
        database_inc(tmp_path, database, workers=1),
        "--job-timeout",
        "1",
        *FAST_RETRY,
        *QUICK_STOP,
    )
    enqueue(database, "tuleap.tracker.creation.jira", {"id": "slow", "standin": {"hang": True}})
    wait_until(lambda: count(database, "tuitop_dead_letters") == 1, 30, "a dead letter")
    time.sleep(0.5)  # a retry would be due by now
    assert len(tuleap.runs_of("slow")) == 1
    assert everything_done(database)
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT reason FROM tuitop_dead_letters")
        (reason,) = cursor.fetchone()
    assert "time limit of 1 s" in reason and "not retried" in reason
    assert count(database, "tuitop_stats", "name = 'timedout'") >= 1
    assert count(database, "tuitop_stats", "name = 'retried'") == 0
    assert pool.stop() == 0


def test_a_topic_opted_back_into_retries_is_cut_and_retried(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, database: DatabaseSettings
) -> None:
    config = database_inc(
        tmp_path,
        database,
        workers=1,
        extra="$tuitop_timeout_retries = 'tuleap.tracker.creation.*';",
    )
    pool = start_db_pool(
        pools, tmp_path, tuleap, config, "--job-timeout", "1", *FAST_RETRY, *QUICK_STOP
    )
    enqueue(database, "tuleap.tracker.creation.jira", {"id": "slow", "standin": {"hang": True}})
    wait_until(lambda: len(tuleap.runs_of("slow")) >= 2, 30, "cut and run again")
    pool.wait_for_log(r"will be retried")
    assert pool.stop() == 0


def test_a_job_longer_than_the_servers_wait_timeout_is_no_database_outage(
    tmp_path: Path,
    pools: list[Pool],
    tuleap: Tuleap,
    mariadb_factory: Callable[[], EmbeddedMariaDB],
) -> None:
    """The server closes a connection silent for its wait_timeout: a worker's, while its
    job runs longer (issue 22: each such job logged the database unreachable, then back).
    The worker's session connects anew before its next statement: nothing is said."""
    server = mariadb_factory()
    with server.connect() as admin, admin.cursor() as cursor:
        cursor.execute("SET GLOBAL wait_timeout = 2")
    database = fresh_database(server)
    pool = start_db_pool(pools, tmp_path, tuleap, database_inc(tmp_path, database, workers=1))
    enqueue(database, "tuleap.fts.index-item", {"id": "long", "standin": {"sleep": 3.5}})
    wait_until(lambda: tuleap.runs_of("long", "end"), 30, "the long job")
    enqueue(database, "tuleap.fts.index-item", {"id": "after"})
    wait_until(lambda: tuleap.runs_of("after", "end"), 30, "the next job")
    wait_until(lambda: everything_done(database), 10, "both acked")
    assert pool.stop() == 0
    log = pool.log()
    assert " is back" not in log and "unreachable" not in log, log[-3000:]


@pytest.mark.parametrize("offset", [3600, -3600], ids=["host-ahead", "host-behind"])
def test_a_host_clock_an_hour_off_the_databases_neither_delays_a_retry_nor_spins(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, database: DatabaseSettings, offset: int
) -> None:
    """A retry's due time is the database's clock; the pool used to compare it with the
    host's (issue 22): an hour behind, a retry due in seconds waited an hour; an hour
    ahead, the pool's loop spun while one waited. Now the store says "in so many
    seconds" and the pool counts them on its own monotonic clock."""
    pool = Pool(
        tmp_path,
        database_inc(tmp_path, database, workers=1),
        *TASK, "--task-dir", str(tuleap.root), "--retry-delay", "4",
        env={**tuleap.env, **skewed_env(tmp_path, offset)},
    )  # fmt: skip
    pools.append(pool.start())
    pool.wait_for_log(r"Start service")
    enqueue(database, "tuleap.fts.index-item", {"id": "once", "standin": {"fail_times": 1}})
    wait_until(lambda: tuleap.runs_of("once", "end"), 20, "the first run")
    pool.wait_for_log(r"will be retried")
    parent = psutil.Process(pool.pid)
    before = sum(parent.cpu_times()[:2])
    time.sleep(2.5)  # the retry waits its 4 s
    assert sum(parent.cpu_times()[:2]) - before < 0.5  # no loop spinning meanwhile
    wait_until(lambda: len(tuleap.runs_of("once", "end")) == 2, 15, "the retry, in seconds")
    assert pool.stop() == 0


def test_a_mariadb_restart_loses_nothing(
    tmp_path: Path,
    pools: list[Pool],
    tuleap: Tuleap,
    mariadb_factory: Callable[[], EmbeddedMariaDB],
) -> None:
    server = mariadb_factory()
    database = fresh_database(server)
    pool = start_db_pool(
        pools, tmp_path, tuleap, database_inc(tmp_path, database, workers=2), *FAST_RETRY
    )
    pool.wait_for_log(r"Start service", count=2)
    ids = [f"r{i}" for i in range(40)]
    for message_id in ids[:20]:
        enqueue(database, "tuleap.fts.index-item", {"id": message_id, "standin": {"sleep": 0.1}})
    wait_until(lambda: len(tuleap.runs("end")) >= 3, 30, "some done")
    server.kill()  # kill -9, mid-run
    time.sleep(2)
    server.start()
    for message_id in ids[20:]:
        enqueue(database, "tuleap.fts.index-item", {"id": message_id})
    wait_until(lambda: everything_done(database), 90, "every row done after the restart")
    ended = {str(run["id"]) for run in tuleap.runs("end") if run["status"] == 0}
    assert ended == set(ids)  # none lost (one cut by the crash may have run twice)
    assert count(database, "tuitop_dead_letters") == 0
    pool.wait_for_log(r"The database is back|is back")
    assert pool.stop() == 0


def test_saving_the_file_changes_the_worker_count_live(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, database: DatabaseSettings
) -> None:
    config = database_inc(tmp_path, database, workers=1)
    pool = start_db_pool(pools, tmp_path, tuleap, config)
    live = "expires_at > UNIX_TIMESTAMP(NOW(6))"
    wait_until(lambda: count(database, "tuitop_workers", live) == 1, 20, "one worker")
    enqueue(database, "tuleap.tracker.artifact", {"id": "during", "standin": {"sleep": 3}})
    wait_until(lambda: tuleap.runs_of("during"), 20, "a job running")
    database_inc(tmp_path, database, workers=3)
    pool.wait_for_log(r"config: workers 1 → 3")
    wait_until(lambda: count(database, "tuitop_workers", live) == 3, 20, "three workers")
    database_inc(tmp_path, database, workers=1)
    wait_until(lambda: count(database, "tuitop_workers", live) == 1, 20, "one again")
    wait_until(lambda: tuleap.runs_of("during", "end"), 20, "the job not cut")
    assert tuleap.runs_of("during", "end")[0]["status"] == 0
    assert pool.stop() == 0


def test_a_warm_stop_lets_the_task_finish_and_gives_back_the_rest(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, database: DatabaseSettings
) -> None:
    pool = start_db_pool(pools, tmp_path, tuleap, database_inc(tmp_path, database, workers=1))
    enqueue(database, "tuleap.tracker.artifact", {"id": "running", "standin": {"sleep": 2}})
    wait_until(lambda: tuleap.runs_of("running"), 20, "running")
    for i in range(3):
        enqueue(database, "tuleap.tracker.artifact", {"id": f"later{i}"})
    assert pool.stop() == 0
    assert tuleap.runs_of("running", "end")[0]["status"] == 0
    assert count(database, "async_events") == 3  # untouched, for whoever comes next
    assert count(database, "tuitop_processing") == count(database, "tuitop_workers") == 0


def test_the_views_read_the_pool_from_the_database(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, database: DatabaseSettings
) -> None:
    config = database_inc(tmp_path, database, workers=2)
    pool = start_db_pool(pools, tmp_path, tuleap, config, "--pool-name", "forge-01", *QUICK_STOP)
    enqueue(database, "tuleap.tracker.creation.jira", {"id": "jira", "standin": {"sleep": 30}})
    wait_until(lambda: tuleap.runs_of("jira"), 20, "the import running")
    for i in range(5):
        enqueue(database, "tuleap.tracker.artifact", {"id": f"n{i}"})
    source = SnapshotSource(lambda: load_config([str(config)]).settings, [str(config)],
                            meter=ProcessMeter())  # fmt: skip

    def busy_snapshot() -> object:
        reading = source.take()
        snapshot = reading.snapshot
        if snapshot is None or not snapshot.pools:
            return None
        lane = [w for w in snapshot.workers if w.lane == "latency_15m" and w.state == "busy"]
        return snapshot if lane and snapshot.last_minute.counts.get("done") == 5 else None

    snapshot = wait_until(busy_snapshot, 20, "the import's worker busy, notifications done")
    assert [pool_view.name for pool_view in snapshot.pools] == ["forge-01"]  # type: ignore[attr-defined]
    assert snapshot.pools[0].redis == database.address  # type: ignore[attr-defined]
    [importer] = [w for w in snapshot.workers if w.lane == "latency_15m"]  # type: ignore[attr-defined]
    assert importer.topic == "tuleap.tracker.creation.jira" and importer.holding == 1
    assert snapshot.last_minute.lanes["latency_10s"].done == 5  # type: ignore[attr-defined]
    assert [lane.name for lane in snapshot.lanes] == ["latency_10s", "latency_15m"]  # type: ignore[attr-defined]
    assert source.take().redis_address == database.address
    assert pool.stop() == 0
    source.close()


def test_the_cli_queues_and_hands_back_on_the_database(
    tmp_path: Path, database: DatabaseSettings
) -> None:
    config = database_inc(tmp_path, database, workers=0)
    queued = run_tuitop(
        "enqueue", "tuleap.fts.index-item", '{"item":"a/b"}', "--config", str(config)
    )
    assert queued.returncode == 0, queued.stderr
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT topic, payload, nb_added_in_queue FROM async_events")
        assert cursor.fetchall() == (("tuleap.fts.index-item", '{"item":"a/b"}', 0),)
    handed = run_tuitop("hand-back", "--config", str(config))
    assert handed.returncode == 0 and "0 retries" in handed.stdout
    adopted = run_tuitop("adopt-tuleap", "--config", str(config))
    assert adopted.returncode == 0 and "nothing to adopt" in adopted.stdout
    shown = run_tuitop("config", "--config", str(config))
    assert "queue            db (a database is configured" in shown.stdout
    assert database.password.reveal() not in shown.stdout + shown.stderr


def test_a_wrong_database_password_is_said_and_never_printed(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, database: DatabaseSettings
) -> None:
    config = database_inc(tmp_path, database, workers=1)
    config.write_text(config.read_text().replace(database.password.reveal(), "wrong-and-secret"))
    pool = Pool(tmp_path, config, *TASK, "--task-dir", str(tuleap.root), env=tuleap.env)
    pools.append(pool.start())
    pool.wait_for_log(r"refused the user or the password \(\$sys_dbpasswd\)")
    listed = run_tuitop("dead-letters", "--config", str(config))
    assert listed.returncode == 1 and "refused the user or the password" in listed.stderr
    assert "wrong-and-secret" not in pool.log() + pool.output() + listed.stderr
    pool.stop()


def test_the_environment_gives_the_password_as_tuleap_reads_it(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, database: DatabaseSettings
) -> None:
    config = database_inc(tmp_path, database, workers=1)
    config.write_text(config.read_text().replace(database.password.reveal(), "not-this-one"))
    env = {**tuleap.env, "TULEAP_SYS_DBPASSWD": database.password.reveal()}
    pool = Pool(tmp_path, config, *TASK, "--task-dir", str(tuleap.root), env=env)
    pools.append(pool.start())
    enqueue(database, "tuleap.tracker.artifact", {"id": "env"})
    wait_until(lambda: tuleap.runs_of("env", "end"), 20, "run with the environment's password")
    assert os.environ.get("TULEAP_SYS_DBPASSWD") is None
    assert json.dumps(database.password.reveal()) not in pool.log()
    pool.stop()


async def test_the_ui_shows_the_pool_on_the_database_and_its_dead_letters(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, database: DatabaseSettings
) -> None:
    from textual.widgets import DataTable

    from tests.tui_pilot import SIZE, text_of, until
    from tuitop.tui.app import TuitopApp
    from tuitop.tui.screens import DeadLettersScreen
    from tuitop.tui.widgets import HeaderBar, QueuePanel
    from tuitop.tui.workers import WorkersPanel

    config = database_inc(tmp_path, database, workers=2)
    start_db_pool(pools, tmp_path, tuleap, config, *FAST_RETRY, *QUICK_STOP)
    enqueue(database, "tuleap.tracker.artifact",
            {"id": "dead", "standin": {"exit": 9}})  # fmt: skip
    wait_until(lambda: count(database, "tuitop_dead_letters") == 1, 30, "a dead letter")
    source = SnapshotSource(lambda: load_config([str(config)]).settings, [str(config)])
    app = TuitopApp(source, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: app.snapshot is not None and len(app.snapshot.workers) == 2)
        header = text_of(app.query_one(HeaderBar))
        assert f"db {database.address} ✔" in header
        assert database.password.reveal() not in header
        await until(lambda: "dead letters 1" in text_of(app.query_one("#queue-figures")))
        assert app.query_one(WorkersPanel).row_count == 2
        await pilot.press("d")
        await until(lambda: isinstance(app.screen, DeadLettersScreen) and app.screen.letters)
        table = app.screen.query_one("#letters", DataTable)
        assert table.row_count == 1
        await pilot.press("r")  # replayed: back on Tuleap's table, run (and dead) again
        await until(lambda: len(tuleap.runs_of("dead")) == 8, 30)
        await pilot.press("escape")
        assert isinstance(app.query_one(QueuePanel), QueuePanel)
    source.close()


def test_a_host_killed_whole_is_recovered_by_the_pool_of_another(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, database: DatabaseSettings
) -> None:
    """Two pools on one database; one host dies (its pool and workers SIGKILLed at once)
    with a task running: the other pool sees its heartbeats expire and recovers what it
    held, with one more try, and runs it."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config = database_inc(tmp_path, database, workers=1, extra="$tuitop_lanes = '';")
    doomed = start_db_pool(pools, tmp_path / "a", tuleap, config, "--pool-name", "host-a")
    enqueue(database, "tuleap.tracker.artifact", {"id": "held", "standin": {"sleep": 600}})
    run = wait_until(lambda: tuleap.runs_of("held"), 20, "host-a running it")[0]
    worker = psutil.Process(int(str(run["ppid"])))
    assert str(run["env"]["TUITOP_WORKER"]).startswith("host-a/0#")  # type: ignore[index]
    survivor = start_db_pool(
        pools, tmp_path / "b", tuleap, config, "--pool-name", "host-b", *QUICK_STOP
    )
    for process in (psutil.Process(doomed.pid), worker, psutil.Process(int(str(run["pid"])))):
        process.kill()  # the host is gone: nothing of it says goodbye
    doomed.wait(10)
    survivor.wait_for_log(r"Recovered 1 message\(s\) of worker host-a/0#", timeout=40)
    second = wait_until(lambda: tuleap.runs_of("held")[1:], 30, "run again on host-b")[0]
    assert "host-b/" in str(second["env"]["TUITOP_WORKER"])  # type: ignore[index]
    with connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT worker_id, nb_added_in_queue FROM tuitop_processing")
        [(holder, tries)] = cursor.fetchall()
    assert holder.startswith("host-b/") and tries == 1
    assert survivor.stop() == 0  # past its grace the task is cut: what it held recovered
    assert count(database, "tuitop_delayed") == 1
