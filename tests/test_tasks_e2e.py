"""End to end: the real ``tuitop --no-ui`` runs Tuleap's messages through a task process.

The task command is the stand-in ``tuleap`` of tests/bin (found on the PATH, as Tuleap's
is on a Tuleap server): it records what it got and where, and fails, hangs, starts a child
or writes on stderr when its message asks. Messages are pushed as Tuleap's front end
pushes them: LPUSH of PHP's json_encode output.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from tests.conftest import SmtpServerFactory
from tests.pool import (
    FAST_RETRY,
    REPO,
    Pool,
    nothing_pending,
    notification,
    push_all,
    wait_until,
    write_config,
)
from tests.tuleap import TASK, Tuleap, php_message
from tuitop.backends.redis import keys
from tuitop.backends.redis.queue import parse_dead_letter
from tuitop.backends.redis.stats import read_buckets
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.stats import summarize

SECRET = "s3cret-redis-password-of-thirty-chars"


@pytest.fixture
def tuleap(tmp_path: Path, pools: list[Pool]) -> Iterator[Tuleap]:
    """The stand-in; after the test, whatever its outcome, the daemons its runs left."""
    tuleap = Tuleap(tmp_path)
    yield tuleap
    for pool in pools:
        pool.kill_all()  # no run starts after this
    tuleap.kill_detached()


def start_pool(
    pools: list[Pool], tmp_path: Path, tuleap: Tuleap, *args: str, **config: object
) -> Pool:
    port = config.pop("port")
    path = write_config(tmp_path, port=port, **config)  # type: ignore[arg-type]
    pool = Pool(
        tmp_path, path, *TASK, "--task-dir", str(tuleap.root), *args, env=tuleap.env
    ).start()
    pools.append(pool)
    return pool


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for_tree_to_end(run: dict[str, object], what: str) -> None:
    """Until the task of this run and the child it started are both gone."""
    leader, child = int(str(run["pid"])), int(str(run["child_pid"]))
    wait_until(lambda: not alive(leader) and not alive(child), 10, what)


def test_tuleaps_messages_run_once_each_with_their_exact_bytes(
    tmp_path: Path,
    pools: list[Pool],
    tuleap: Tuleap,
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    smtp_server_factory: SmtpServerFactory,
) -> None:
    smtp = smtp_server_factory()
    pool = start_pool(
        pools, tmp_path, tuleap, port=redis_server.port, smtp_port=smtp.port, workers=3
    )
    now = time.time()
    raws = []
    for i in range(40):
        topic = ("tuleap.tracker.artifact", "tuleap.git.hooks.post-receive")[i % 2]
        # PHP escapes "/" and non-ASCII; the task must get exactly these bytes.
        raws.append(
            php_message(
                topic,
                f'{{"id":"m{i}","artifact_id":{i},"changeset_id":{1000 + i},'
                f'"path":"repo\\/x.git","who":"J\\u00e9r\\u00f4me"}}',
                now + i / 1000,
            )
        )
    # tuitop's own notification, with its mails, is sent by the built-in handler.
    raws.append(notification(7))
    push_all(redis_client, raws)

    wait_until(lambda: len(tuleap.runs("end")) == 40, 60, "40 tasks to end")
    smtp.wait_for(1)
    wait_until(lambda: nothing_pending(redis_client), 20, "an empty queue")
    runs = tuleap.runs()
    assert sorted(r["id"] for r in runs) == sorted(f"m{i}" for i in range(40))  # once each
    by_id = {r["id"]: r for r in runs}
    for i, raw in enumerate(raws[:40]):
        run = by_id[f"m{i}"]
        assert bytes.fromhex(str(run["stdin_hex"])) == raw
        assert run["cwd"] == str(tuleap.root)
        assert run["argv"] == [str(REPO / "tests" / "bin" / "tuleap"), "queue:task-worker-process"]
        env = run["env"]
        assert isinstance(env, dict)
        assert env["SHELL_VERBOSITY"] == "1" and env["TLP_DELAY_CRON_CMD"] == "0"
    assert len({r["env"]["TUITOP_WORKER"] for r in runs}) > 1  # type: ignore[index]  # spread
    assert redis_client.llen(keys.DEAD_LETTERS) == 0
    log = pool.log()
    assert log.count("[info] Got message: {") >= 41
    assert "[info] Message processed in " in log
    assert pool.stop() == 0


def test_a_failing_task_is_retried_then_dead_lettered_with_its_stderr_tail(
    tmp_path: Path,
    pools: list[Pool],
    tuleap: Tuleap,
    redis_server_factory: object,
) -> None:
    server = redis_server_factory(password=SECRET)  # type: ignore[operator]
    client = server.client()
    pool = start_pool(
        pools, tmp_path, tuleap, *FAST_RETRY, port=server.port, password=SECRET, workers=2
    )
    noise = "x" * 10_000 + "\n"
    push_all(
        client,
        [
            php_message(
                "tuleap.tracker.artifact.deletion",
                json.dumps(
                    {
                        "id": "doomed",
                        "standin": {
                            "exit": 3,
                            "stderr": f"{noise}PHP Fatal error: cannot connect with {SECRET}\n",
                        },
                    }
                ),
                time.time(),
            ),
            php_message(
                "tuleap.fts.index-item",
                json.dumps({"id": "flaky", "standin": {"fail_times": 2}}),
                time.time(),
            ),
        ],
    )
    wait_until(lambda: client.llen(keys.DEAD_LETTERS) == 1, 30, "a dead letter")
    wait_until(lambda: nothing_pending(client), 30, "an empty queue")
    assert len(tuleap.runs_of("doomed")) == 4  # Tuleap's 1 + 3 tries
    assert len(tuleap.runs_of("flaky")) == 3  # failed twice, done the third time
    letter = parse_dead_letter(client.lindex(keys.DEAD_LETTERS, 0))
    assert letter.topic == "tuleap.tracker.artifact.deletion"
    assert "task exited with status 3" in letter.reason
    assert letter.reason.endswith(
        "PHP Fatal error: cannot connect with ***; given up after 4 tries"
    )
    assert letter.traceback.endswith("PHP Fatal error: cannot connect with ***\n")
    assert len(letter.traceback.encode()) <= 4096
    assert SECRET not in pool.log() + pool.output()
    client.close()
    assert pool.stop() == 0


def test_a_hanging_task_is_killed_at_the_time_limit_with_its_children_and_not_run_again(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, redis_server: EmbeddedRedis
) -> None:
    """As Tuleap's worker: a job past its time limit is not run again (a JIRA import cut
    at 15 minutes would start over on top of what it did). It is a dead letter at once,
    with why, counted timedout."""
    client = redis_server.client()
    pool = start_pool(
        pools,
        tmp_path,
        tuleap,
        *FAST_RETRY,
        "--job-timeout",
        "1.5",
        port=redis_server.port,
        workers=1,
    )
    payload = json.dumps({"id": "hang", "standin": {"hang": True, "child": True}})
    push_all(client, [php_message("tuleap.tracker.creation.jira", payload, time.time())])
    [first] = wait_until(lambda: tuleap.runs_of("hang"), 20, "the task to start")
    wait_for_tree_to_end(first, "the task and its child to be killed")
    wait_until(lambda: client.llen(keys.DEAD_LETTERS) == 1, 40, "the dead letter")
    letter = parse_dead_letter(client.lindex(keys.DEAD_LETTERS, 0))
    assert "ran past the time limit of 1.5 s" in letter.reason
    assert "not retried" in letter.reason and "$tuitop_timeout_retries" in letter.reason
    wait_until(lambda: not alive(int(first["child_pid"])), 10, "its child killed")
    time.sleep(0.5)  # a retry would be due by now (--retry-delay 0.05)
    assert len(tuleap.runs_of("hang")) == 1 and not tuleap.runs_of("hang", "end")
    assert client.zcard(keys.DELAYED) == 0 and client.llen(keys.QUEUE) == 0
    counts = summarize(read_buckets(client, time.time(), 120), 120).counts
    assert counts.get("timedout") == 1 and counts.get("dead") == 1
    assert not counts.get("retried")
    assert "Task stopped: it ran past the time limit" in pool.log()
    client.close()
    assert pool.stop() == 0


def test_a_lane_opted_back_into_retries_runs_a_job_past_its_limit_again(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, redis_server: EmbeddedRedis
) -> None:
    """``$tuitop_timeout_retries`` names the lanes and topics retried after a time-out:
    Tuleap's three returns, a time-out each, then a dead letter."""
    client = redis_server.client()
    pool = start_pool(
        pools,
        tmp_path,
        tuleap,
        *FAST_RETRY,
        "--job-timeout",
        "1",
        port=redis_server.port,
        workers=1,
        extra="$tuitop_timeout_retries = 'latency_15m';",
    )
    payload = json.dumps({"id": "hang", "standin": {"hang": True}})
    push_all(client, [php_message("tuleap.tracker.creation.jira", payload, time.time())])
    wait_until(lambda: client.llen(keys.DEAD_LETTERS) == 1, 60, "the dead letter")
    letter = parse_dead_letter(client.lindex(keys.DEAD_LETTERS, 0))
    assert "given up after 4 tries" in letter.reason and "not retried" not in letter.reason
    assert len(tuleap.runs_of("hang")) == 4
    counts = summarize(read_buckets(client, time.time(), 120), 120).counts
    assert counts.get("timedout") == 4 and counts.get("retried") == 3
    client.close()
    assert pool.stop() == 0


def test_no_task_process_is_left_after_a_sigkill_of_the_pool(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, redis_server: EmbeddedRedis
) -> None:
    client = redis_server.client()
    pool = start_pool(pools, tmp_path, tuleap, "--grace", "1", port=redis_server.port, workers=1)
    payload = json.dumps({"id": "orphan", "standin": {"hang": True, "child": True}})
    push_all(client, [php_message("tuleap.project.create-from-archive", payload, time.time())])
    [run] = wait_until(lambda: tuleap.runs_of("orphan"), 20, "the task to start")
    pool.signal(signal.SIGKILL)  # the pool's parent process only
    pool.wait(10)
    wait_for_tree_to_end(run, "the task tree to be killed once the pool is gone (after --grace)")
    # Nothing lost: it waits for a retry, charged one try.
    wait_until(lambda: client.zcard(keys.DELAYED) == 1, 10, "the message in the delayed set")
    assert "the pool is gone" in pool.log()
    client.close()


def test_a_pool_killed_whole_leaves_nothing_after_its_next_start(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, redis_server: EmbeddedRedis
) -> None:
    client = redis_server.client()
    pool = start_pool(pools, tmp_path, tuleap, port=redis_server.port, workers=1)
    payload = json.dumps({"id": "whole", "standin": {"hang": True, "child": True}})
    push_all(client, [php_message("tuleap.project.create-from-archive", payload, time.time())])
    [run] = wait_until(lambda: tuleap.runs_of("whole"), 20, "the task to start")
    # The pool, its forkserver and its worker at once (the task is in a group of its own).
    family = psutil.Process(pool.pid).children(recursive=True)
    task_tree = {int(run["pid"]), int(run["child_pid"])}  # type: ignore[arg-type]
    for process in [psutil.Process(pool.pid), *family]:
        if process.pid not in task_tree:
            process.kill()
    pool.wait(10)
    wait_until(lambda: not alive(int(run["pid"])), 10, "the task leader to die with its worker")
    assert alive(int(run["child_pid"]))  # what it started lives on: no one is left to kill it
    second = Pool(
        tmp_path,
        tmp_path / "local.inc",
        *TASK,
        "--task-dir",
        str(tuleap.root),
        "--pool-name",
        "second",
        env=tuleap.env,
    ).start()
    pools.append(second)
    # Swept by the next start (or by any pool starting on this host meanwhile: every one
    # sweeps what gone workers' tasks left, so the line may be another's log; what the
    # sweep says is tests/test_tasks.py's).
    wait_until(lambda: not alive(int(run["child_pid"])), 20, "the next start to sweep it")
    # The message the dead worker held is recovered once its heartbeat expired, and runs.
    wait_until(lambda: len(tuleap.runs_of("whole")) == 2, 40, "the message to run again")
    client.close()


def test_a_worker_killed_mid_task_takes_its_task_tree_along(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, redis_server: EmbeddedRedis
) -> None:
    client = redis_server.client()
    pool = start_pool(pools, tmp_path, tuleap, *FAST_RETRY, port=redis_server.port, workers=1)
    payload = json.dumps({"id": "w", "standin": {"hang": True, "child": True}})
    push_all(client, [php_message("tuleap.tracker.creation.jira", payload, time.time())])
    [run] = wait_until(lambda: tuleap.runs_of("w"), 20, "the task to start")
    worker = psutil.Process(int(run["ppid"]))  # type: ignore[arg-type]
    worker.kill()
    wait_for_tree_to_end(run, "the task tree of the dead worker to be killed")
    wait_until(lambda: len(tuleap.runs_of("w")) == 2, 20, "the message recovered and run again")
    client.close()
    pool.kill_all()


def test_a_warm_stop_lets_a_running_task_finish_and_a_cold_one_kills_it(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, redis_server: EmbeddedRedis
) -> None:
    client = redis_server.client()
    pool = start_pool(pools, tmp_path, tuleap, port=redis_server.port, workers=1)
    payload = json.dumps({"id": "warm", "standin": {"sleep": 2}})
    push_all(client, [php_message("tuleap.tracker.creation.jira", payload, time.time())])
    wait_until(lambda: tuleap.runs_of("warm"), 20, "the task to start")
    pool.signal(signal.SIGTERM)
    assert pool.wait(20) == 0
    assert len(tuleap.runs_of("warm", "end")) == 1  # it finished
    assert nothing_pending(client) and client.llen(keys.DEAD_LETTERS) == 0

    pool = start_pool(pools, tmp_path, tuleap, port=redis_server.port, workers=1)
    payload = json.dumps({"id": "cold", "standin": {"hang": True, "child": True}})
    push_all(client, [php_message("tuleap.tracker.creation.jira", payload, time.time())])
    [run] = wait_until(lambda: tuleap.runs_of("cold"), 20, "the task to start")
    pool.signal(signal.SIGTERM)
    time.sleep(0.5)
    pool.signal(signal.SIGTERM)  # the second signal: cold
    assert pool.wait(20) == 0
    wait_for_tree_to_end(run, "the task tree killed by the cold stop")
    assert client.zcard(keys.DELAYED) == 1  # recovered, with one more try
    client.close()


def test_task_options_are_checked_at_start(tmp_path: Path, redis_server: EmbeddedRedis) -> None:
    from tests.pool import run_tuitop

    config = write_config(tmp_path, port=redis_server.port)
    result = run_tuitop(
        "--no-ui", "--config", str(config), "--task-command", "no-such-cmd x", "--task-dir", "/"
    )
    assert result.returncode == 2
    assert "no-such-cmd is not found on the PATH" in result.stderr
    result = run_tuitop("--no-ui", "--config", str(config), "--task-dir", str(tmp_path))
    assert result.returncode == 2
    assert "--task-dir needs a --task-command" in result.stderr


def test_a_daemon_a_task_started_ends_when_its_worker_does(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, redis_server: EmbeddedRedis
) -> None:
    client = redis_server.client()
    # One message a worker: the worker exits (recycled) right after the task.
    pool = start_pool(
        pools, tmp_path, tuleap, "--max-messages", "1", port=redis_server.port, workers=1
    )
    payload = json.dumps({"id": "d", "standin": {"daemon": True}})
    push_all(client, [php_message("tuleap.git.hooks.post-receive", payload, time.time())])
    [run] = wait_until(lambda: tuleap.runs_of("d", "end") and tuleap.runs_of("d"), 20, "the task")
    assert run["pgid"] != run["daemon_pgid"]  # it left the task's group
    wait_until(
        lambda: not alive(int(run["daemon_pid"])),  # type: ignore[arg-type]
        15,
        "the daemon to be ended with its worker",
    )
    client.close()
    assert pool.stop() == 0


def detached_daemon(run: dict[str, object]) -> psutil.Process:
    """The ``setsid env -i sleep`` a run started, once it runs sleep, its environment reset
    and in a session of its own (the ``tuleap`` fixture kills it after the test)."""
    daemon = psutil.Process(int(str(run["detached_pid"])))
    wait_until(lambda: daemon.name() == "sleep", 10, "the daemon to run sleep")
    assert daemon.environ() == {}  # no TUITOP_WORKER to find it by
    assert os.getsid(daemon.pid) == daemon.pid
    return daemon


def test_a_setsid_env_i_daemon_of_a_task_lives_until_its_worker_exits_then_is_ended(
    tmp_path: Path,
    pools: list[Pool],
    tuleap: Tuleap,
    redis_server: EmbeddedRedis,
) -> None:
    """A task's background job (``setsid env -i …&``, as a git hook's ``git gc --auto``)
    is adopted by its worker: it may finish while the worker runs other jobs, and is
    ended when the worker exits (here recycled after two messages). It escaped before:
    re-parented to init, nothing named its worker in its environment."""
    client = redis_server.client()
    pool = start_pool(
        pools, tmp_path, tuleap, "--max-messages", "2", port=redis_server.port, workers=1
    )
    payload = json.dumps({"id": "gc", "standin": {"detached": 300}})
    push_all(client, [php_message("tuleap.git.hooks.post-receive", payload, time.time())])
    [run] = wait_until(lambda: tuleap.runs_of("gc", "end") and tuleap.runs_of("gc"), 20, "the task")
    daemon = detached_daemon(run)
    assert daemon.ppid() == run["ppid"]  # its worker's, not init's
    pool.wait_for_log("Message processed")
    assert alive(daemon.pid)  # the job is over, the worker is not: it runs on
    push_all(client, [php_message("tuleap.git.hooks.post-receive", '{"id":"next"}', time.time())])
    wait_until(lambda: not alive(daemon.pid), 10, "the daemon ended as its worker exits")
    pool.wait_for_log(
        rf"Stopped 1 process\(es\) its tasks left running: sleep \(pid {daemon.pid}\)"
    )
    client.close()
    assert pool.stop() == 0


def test_a_setsid_env_i_daemon_of_a_killed_worker_is_ended_by_the_pool(
    tmp_path: Path,
    pools: list[Pool],
    tuleap: Tuleap,
    redis_server: EmbeddedRedis,
) -> None:
    """The worker SIGKILLed mid-task: its task dies with it, and the daemon the task had
    started, adopted by the worker, is re-parented to the forkserver (a subreaper too),
    whose children that are no workers the pool ends as it reaps the worker."""
    client = redis_server.client()
    pool = start_pool(pools, tmp_path, tuleap, "--grace", "1", port=redis_server.port, workers=1)
    payload = json.dumps({"id": "k", "standin": {"detached": 300, "hang": True}})
    push_all(client, [php_message("tuleap.tracker.creation.jira", payload, time.time())])
    [run] = wait_until(lambda: tuleap.runs_of("k"), 20, "the task to start")
    daemon = detached_daemon(run)
    worker = psutil.Process(int(str(run["ppid"])))
    assert daemon.ppid() == worker.pid
    worker.kill()
    wait_until(lambda: not alive(daemon.pid), 10, "the daemon of the killed worker ended")
    pool.wait_for_log(
        rf"Killed \d+ process\(es\) the tasks of worker {re.escape(worker_id_in(run))} "
        rf"left running: .*sleep \(pid {daemon.pid}\)"
    )
    assert "unexpected pid" not in pool.output()  # the forkserver reaps them quietly
    client.close()
    assert pool.stop() == 0  # before its retry is due (5 s); else --grace, and a kill


def worker_id_in(run: dict[str, object]) -> str:
    env = run["env"]
    assert isinstance(env, dict)
    return str(env["TUITOP_WORKER"])


def test_the_orphans_of_tasks_that_ended_are_reaped_by_their_worker(
    tmp_path: Path,
    pools: list[Pool],
    tuleap: Tuleap,
    redis_server: EmbeddedRedis,
) -> None:
    """A worker adopts its tasks' orphans, so it must wait for them: one that ended is
    a zombie under its worker until the worker's next job ends, not for the rest of its
    life."""
    client = redis_server.client()
    pool = start_pool(pools, tmp_path, tuleap, port=redis_server.port, workers=1)
    payload = json.dumps({"id": "brief", "standin": {"detached": 1}})
    push_all(client, [php_message("tuleap.git.hooks.post-receive", payload, time.time())])
    [run] = wait_until(lambda: tuleap.runs_of("brief"), 20, "the task to start")
    orphan = psutil.Process(int(str(run["detached_pid"])))
    wait_until(lambda: orphan.status() == psutil.STATUS_ZOMBIE, 10, "the orphan to end")
    assert orphan.ppid() == run["ppid"]  # adopted by the worker, which has not reaped it yet
    push_all(client, [php_message("tuleap.git.hooks.post-receive", '{"id":"next"}', time.time())])
    wait_until(lambda: not orphan.is_running(), 10, "the zombie reaped after the next job")
    client.close()
    assert pool.stop() == 0


def test_a_pool_stopping_warm_is_seen_to_its_end_and_hand_back_waits(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, redis_server: EmbeddedRedis
) -> None:
    from tests.pool import run_tuitop

    client = redis_server.client()
    pool = start_pool(pools, tmp_path, tuleap, port=redis_server.port, workers=1)
    payload = json.dumps({"id": "long", "standin": {"sleep": 14}})
    push_all(client, [php_message("tuleap.tracker.creation.jira", payload, time.time())])
    wait_until(lambda: tuleap.runs_of("long"), 20, "the task to start")
    pool.signal(signal.SIGTERM)
    time.sleep(12)  # past the heartbeat's 10 s: the grace period goes on
    assert client.hget(keys.pool(pool_name(client)), "stopping") == b"1"
    refused = run_tuitop("hand-back", "--config", str(tmp_path / "local.inc"))
    assert refused.returncode == 1, refused.stdout
    assert pool.wait(30) == 0
    assert len(tuleap.runs_of("long", "end")) == 1  # it ran once, to its end
    assert nothing_pending(client)
    client.close()


def pool_name(client: redis.Redis) -> str:
    [name] = client.smembers(keys.POOLS)
    return str(name.decode())


def test_tuleap_upgraded_under_the_pool_holds_every_job_until_its_sanity_check_passes(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, redis_server: EmbeddedRedis
) -> None:
    """Tuleap's VERSION changes while the pool runs (an upgrade in place): the job
    running finishes, no other is taken while ``tuleap sanity-check`` fails, the views
    say why, and taking resumes once it passes."""
    from tests.pool import run_tuitop

    (tuleap.root / "VERSION").write_text("17.4\n")
    client = redis_server.client()
    pool = start_pool(pools, tmp_path, tuleap, port=redis_server.port, workers=1)
    pool.wait_for_log(r"Start service")
    running = json.dumps({"id": "running", "standin": {"sleep": 2}})
    push_all(client, [php_message("tuleap.fts.index-item", running, time.time())])
    wait_until(lambda: tuleap.runs_of("running"), 20, "the first job to start")
    (tuleap.root / "SANITY").write_text("Tuleap needs MySQL 8.0 or 8.4\n")
    (tuleap.root / "VERSION").write_text("17.5\n")
    pool.wait_for_log(r"Tuleap's version changed \(17.4 → 17.5\)")
    later = json.dumps({"id": "later"})
    push_all(client, [php_message("tuleap.fts.index-item", later, time.time())])
    wait_until(lambda: tuleap.runs_of("running", "end"), 20, "the running job to finish")
    pool.wait_for_log(r"'tuleap sanity-check' failed \(status 1: Tuleap needs MySQL")
    config = tmp_path / "local.inc"
    checked = run_tuitop("check", "--config", str(config))
    assert "Tuleap upgrade (17.4 → 17.5)" in checked.stdout, checked.stdout
    top = run_tuitop("top", "--once", "--config", str(config))
    assert "Tuleap upgrade" in top.stdout, top.stdout
    time.sleep(1)
    assert not tuleap.runs_of("later") and client.llen(keys.QUEUE) == 1
    (tuleap.root / "SANITY").unlink()
    pool.wait_for_log(r"Tuleap 17.5: 'tuleap sanity-check' passed", timeout=20)
    wait_until(lambda: tuleap.runs_of("later", "end"), 20, "the job after the upgrade")
    client.close()
    assert pool.stop() == 0
