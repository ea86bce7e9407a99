"""End to end: the real ``tuitop --no-ui`` against a private Redis and a real SMTP server.

Every path a job can take is driven here through the real processes: done, failed and
retried, dead-lettered, worker killed mid-job, timed out, recycled, warm and cold shutdown,
supervisor killed, bad input, wrong password, Redis away at start and restarted.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import psutil
import redis

from tests.conftest import RedisServerFactory, SmtpServerFactory
from tests.handlers_for_tests import RUNS_KEY
from tests.pool import (
    FAST_RETRY,
    Pool,
    nothing_pending,
    notification,
    processing_lists,
    push_all,
    start_pool,
    wait_until,
    worker_heartbeats,
    write_config,
)
from tuitop.backends.redis import keys
from tuitop.backends.redis.queue import Queue, alive_in, parse_dead_letter
from tuitop.backends.redis.snapshot import take_snapshot
from tuitop.backends.redis.stats import read_buckets
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.embedded.smtpserver import SmtpServer
from tuitop.message import encode
from tuitop.notification import TOPIC
from tuitop.stats import summarize


def test_delivers_every_one_of_1000_notifications(
    tmp_path: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    smtp_server: SmtpServer,
) -> None:
    config = write_config(tmp_path, port=redis_server.port, smtp_port=smtp_server.port)
    pool = start_pool(pools, tmp_path, config)
    push_all(redis_client, [notification(i) for i in range(1000)])
    received = smtp_server.wait_for(1000, timeout=120)
    assert sorted(m.subject for m in received) == sorted(
        f"artifact #{i} updated" for i in range(1000)
    )
    assert all(m.mail_from == "noreply@example.com" for m in received)
    wait_until(lambda: nothing_pending(redis_client), what="an empty queue")
    assert redis_client.llen(keys.DEAD_LETTERS) == 0
    assert pool.stop() == 0
    log = pool.log()
    assert log.count("Start notification") == 1000
    assert log.count("End notification") == 1000
    assert len(smtp_server.messages) == 1000  # no duplicate either


def test_worker_killed_mid_job_its_message_is_delivered_after_all(
    tmp_path: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    smtp_server_factory: SmtpServerFactory,
) -> None:
    smtp = smtp_server_factory(delay=30.0)
    config = write_config(tmp_path, port=redis_server.port, workers=1, smtp_port=smtp.port)
    pool = start_pool(pools, tmp_path, config, *FAST_RETRY)
    push_all(redis_client, [notification(7)])
    busy = wait_until(
        lambda: [hb for hb in worker_heartbeats(redis_client).values() if hb["state"] == "busy"],
        what="a busy worker",
    )[0]
    assert busy["topic"] == TOPIC
    # The relay holds the mail for 30 s: the worker is in the middle of its job.
    time.sleep(0.5)
    smtp.set_delay(0.0)
    psutil.Process(int(busy["pid"])).kill()
    delivered = smtp.wait_for(1, timeout=20)
    assert delivered[0].subject == "artifact #7 updated"
    log = pool.log()
    assert "was killed by SIGKILL" in log
    assert "Recovered 1 message(s) of worker" in log
    wait_until(lambda: nothing_pending(redis_client), what="an empty queue")
    assert redis_client.llen(keys.DEAD_LETTERS) == 0
    assert pool.stop() == 0


def test_a_mail_whose_relay_hung_up_before_answering_is_sent_again(
    tmp_path: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    smtp_server: SmtpServer,
) -> None:
    """Issue 22: the relay loses the line after the whole mail, before its 250. The pool
    retries it (it was counted as sent: lost when the relay had not stored it), counts the
    try ``unanswered`` and logs that the mail may come twice."""
    smtp_server.hang_up(times=1)
    config = write_config(tmp_path, port=redis_server.port, workers=1, smtp_port=smtp_server.port)
    pool = start_pool(pools, tmp_path, config, *FAST_RETRY)
    push_all(redis_client, [notification(7)])
    [delivered] = smtp_server.wait_for(1, timeout=20)
    assert delivered.subject == "artifact #7 updated"
    # The relay's copy before it hung up: a real relay may deliver that one too.
    assert [message.subject for message in smtp_server.hung_up] == ["artifact #7 updated"]
    wait_until(lambda: nothing_pending(redis_client), what="an empty queue")
    counts = summarize(read_buckets(redis_client, time.time(), 120), 120).counts
    assert counts.get("unanswered") == 1 and counts.get("retried") == 1
    assert not counts.get("failed") and not counts.get("dead")
    log = pool.log()
    assert "artifact #7 changeset #1007: mail to user7@example.com" in log
    assert "it may come twice" in log
    assert pool.stop() == 0


def test_sigterm_is_a_warm_shutdown_that_loses_nothing(
    tmp_path: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    smtp_server_factory: SmtpServerFactory,
) -> None:
    smtp = smtp_server_factory(delay=0.4)
    config = write_config(tmp_path, port=redis_server.port, workers=2, smtp_port=smtp.port)
    pool = start_pool(pools, tmp_path, config)
    total = 20
    push_all(redis_client, [notification(i) for i in range(total)])
    smtp.wait_for(2, timeout=20)
    assert pool.stop(timeout=30) == 0
    # No job was cut off: each message is either delivered or still queued, never lost.
    assert smtp.abandoned == []
    delivered = {m.subject for m in smtp.messages}
    queued = [json.loads(raw) for raw in redis_client.lrange(keys.QUEUE, 0, -1)]
    still_queued = {f"artifact #{m['payload']['artifact_id']} updated" for m in queued}
    assert delivered.isdisjoint(still_queued)
    assert len(delivered) + len(still_queued) == total
    assert all(m["_queued_total"] == 0 for m in queued)
    assert processing_lists(redis_client) == {}
    assert redis_client.zcard(keys.DELAYED) == 0
    assert redis_client.smembers(keys.WORKERS) == set()
    assert "Shutting down" in pool.log()


def test_second_signal_is_a_cold_shutdown_and_the_cut_jobs_are_kept(
    tmp_path: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    pool = start_pool(pools, tmp_path, config, "--handlers", "tests.handlers_for_tests")
    push_all(redis_client, [encode("test.sleep", {"id": "long", "seconds": 60})])
    wait_until(lambda: redis_client.llen(RUNS_KEY) == 1, what="the job to start")
    pool.signal(signal.SIGTERM)
    pool.wait_for_log("Shutting down")
    pool.signal(signal.SIGTERM)
    assert pool.wait(timeout=20) == 0
    # The cut job went back with one more try, waiting for its retry time: not lost.
    delayed = redis_client.zrange(keys.DELAYED, 0, -1)
    assert len(delayed) == 1
    assert json.loads(delayed[0].split(b"|", 1)[1])["_queued_total"] == 1
    assert processing_lists(redis_client) == {}


def test_killed_supervisor_leaves_no_orphan(
    tmp_path: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=3)
    pool = start_pool(pools, tmp_path, config)
    wait_until(lambda: len(worker_heartbeats(redis_client)) == 3, what="3 workers")
    family = psutil.Process(pool.pid).children(recursive=True)
    assert len(family) >= 3
    pool.signal(signal.SIGKILL)
    pool.wait(timeout=10)
    _gone, alive = psutil.wait_procs(family, timeout=10)
    assert alive == [], f"orphans left: {[p.pid for p in alive]}"


def test_bad_messages_go_to_the_dead_letters_with_reasons(
    tmp_path: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    smtp_server: SmtpServer,
) -> None:
    config = write_config(tmp_path, port=redis_server.port, smtp_port=smtp_server.port)
    pool = start_pool(pools, tmp_path, config)
    bad_payload = encode(
        TOPIC, {"project_id": 1, "artifact_id": 2, "changeset_id": 3, "mails": "oops"}
    )
    # Tuleap's own notification (ids only): for Tuleap's task process, and there is none.
    tuleaps_own = encode(TOPIC, {"artifact_id": 2, "changeset_id": 3})
    push_all(
        redis_client,
        [
            b"this is not JSON",
            encode("no.such.topic", {}),
            bad_payload,
            tuleaps_own,
            b"[1, 2]",
            b'{"event_name":"tuitop.noop","payload":{"v":NaN}}',
            notification(1),
        ],
    )
    smtp_server.wait_for(1)
    wait_until(lambda: redis_client.llen(keys.DEAD_LETTERS) == 6, what="6 dead letters")
    reasons = sorted(
        parse_dead_letter(e).reason for e in redis_client.lrange(keys.DEAD_LETTERS, 0, -1)
    )
    assert sum("not JSON" in r for r in reasons) == 2  # NaN is not JSON either
    assert any("unknown topic 'no.such.topic'" in r and "--task-command" in r for r in reasons)
    assert any("payload.mails" in r for r in reasons)
    assert any("Tuleap's own notification" in r for r in reasons)
    assert any("not a JSON object" in r for r in reasons)
    wait_until(lambda: nothing_pending(redis_client), what="an empty queue")
    assert pool.stop() == 0


def test_failing_handler_is_retried_then_dead_lettered_with_its_traceback(
    tmp_path: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=2)
    pool = start_pool(
        pools, tmp_path, config, "--handlers", "tests.handlers_for_tests", *FAST_RETRY
    )
    push_all(redis_client, [encode("test.fail", {"id": "f1"})])
    wait_until(lambda: redis_client.llen(keys.DEAD_LETTERS) == 1, what="a dead letter")
    assert redis_client.llen(RUNS_KEY) == 4  # the first try and Tuleap's 3 returns
    letter = parse_dead_letter(redis_client.lindex(keys.DEAD_LETTERS, 0))
    assert "given up after 4 tries" in letter.reason
    assert "RuntimeError: boom from test.fail" in letter.traceback
    assert letter.topic == "test.fail"
    assert "boom from test.fail" in pool.log()
    wait_until(lambda: nothing_pending(redis_client), what="an empty queue")
    # An operator replays it: it runs again, with a fresh try count.
    assert Queue(redis_client).replay(letter)
    wait_until(lambda: redis_client.llen(RUNS_KEY) >= 5, what="the replayed run")
    assert pool.stop() == 0


def one_second_limit_pool(pools: list[Pool], tmp_path: Path, redis_server: EmbeddedRedis) -> Pool:
    """One worker with the test handlers and a time limit of one second."""
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    return start_pool(
        pools,
        tmp_path,
        config,
        *("--handlers", "tests.handlers_for_tests", "--job-timeout", "1", *FAST_RETRY),
    )


def test_job_past_the_time_limit_kills_its_worker_and_is_not_run_again(
    tmp_path: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
) -> None:
    """A job run in the worker (no task process to stop) past the time limit: the pool
    kills the worker, and gives that job up (Tuleap's rule) while what else it held goes
    back; the worker's next job is untouched."""
    pool = one_second_limit_pool(pools, tmp_path, redis_server)
    push_all(redis_client, [encode("test.sleep", {"id": "s", "seconds": 60})])
    pool.wait_for_log("Task timed out", timeout=20)
    wait_until(lambda: redis_client.llen(keys.DEAD_LETTERS) == 1, 20, "the dead letter")
    letter = parse_dead_letter(redis_client.lindex(keys.DEAD_LETTERS, 0) or b"")
    assert "its job ran past the time limit" in letter.reason and "not retried" in letter.reason
    push_all(redis_client, [encode("test.count", {"id": "next"})])
    wait_until(lambda: b"next" in redis_client.lrange(RUNS_KEY, 0, -1), what="the next job")
    assert redis_client.lrange(RUNS_KEY, 0, -1).count(b"s") == 1
    pool.signal(signal.SIGTERM)
    pool.wait_for_log("Shutting down")
    pool.signal(signal.SIGTERM)
    assert pool.wait(timeout=20) == 0
    total = (
        redis_client.llen(keys.QUEUE)
        + redis_client.zcard(keys.DELAYED)
        + redis_client.llen(keys.DEAD_LETTERS)
        + sum(processing_lists(redis_client).values())
    )
    assert total == 1  # still somewhere (a dead letter), never lost


def test_a_job_killed_at_the_time_limit_leaves_its_traceback_in_the_log_and_letter(
    tmp_path: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
) -> None:
    """Before the kill the pool asks the worker for its stacks (faulthandler, SIGUSR1):
    an admin sees where the job hung, in the log and with the dead letter."""
    pool = one_second_limit_pool(pools, tmp_path, redis_server)
    push_all(redis_client, [encode("test.sleep", {"id": "s", "seconds": 60})])
    pool.wait_for_log("at its time limit:", timeout=20)
    log = pool.log()
    stack = log[log.index("at its time limit:") :]
    assert "handlers_for_tests.py" in stack and "in sleep" in stack, stack[:2000]
    wait_until(lambda: redis_client.llen(keys.DEAD_LETTERS) == 1, 60, "the dead letter")
    letter = parse_dead_letter(redis_client.lindex(keys.DEAD_LETTERS, 0) or b"")
    assert "its job ran past the time limit" in letter.reason
    assert "in sleep" in letter.traceback and "handlers_for_tests.py" in letter.traceback
    assert pool.stop() == 0


def test_a_job_that_ends_as_it_is_asked_for_its_stacks_is_not_killed(
    tmp_path: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
) -> None:
    """Between asking for the stacks and the kill the job may end: the kill would hit the
    worker's next job (charged a try, dead-lettered with stacks not its own)."""
    pool = one_second_limit_pool(pools, tmp_path, redis_server)
    push_all(redis_client, [encode("test.ends_when_asked", {"id": "a"})])
    pool.wait_for_log("as it was asked for its stacks: not killed", timeout=20)
    wait_until(lambda: nothing_pending(redis_client), what="nothing pending")
    assert redis_client.lrange(RUNS_KEY, 0, -1) == [b"a"]  # run once, done
    assert "Task timed out" not in pool.log() and "killed by SIGKILL" not in pool.log()
    assert pool.stop() == 0


def test_workers_are_recycled_after_max_messages(
    tmp_path: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    pool = start_pool(
        pools, tmp_path, config, "--handlers", "tests.handlers_for_tests", "--max-messages", "5"
    )
    push_all(redis_client, [encode("test.count", {"id": i}) for i in range(23)])
    wait_until(lambda: redis_client.llen(RUNS_KEY) == 23, what="23 runs")
    wait_until(lambda: nothing_pending(redis_client), what="an empty queue")
    log = pool.log()
    assert log.count("Max messages reached") >= 4
    worker_pids = set(re.findall(r"\[(\d+)\] \[info\] Start service", log))
    assert len(worker_pids) >= 5  # one fresh process per 5 messages
    assert sorted(int(x) for x in redis_client.lrange(RUNS_KEY, 0, -1)) == list(range(23))
    assert pool.stop() == 0


def test_wrong_redis_password_is_said_plainly_and_never_printed(
    tmp_path: Path,
    pools: list[Pool],
    redis_server_factory: RedisServerFactory,
) -> None:
    right = "the-right-password-is-long-enough-0123456789"
    wrong = "a-wrong-password-that-must-not-leak-9876543210"
    server = redis_server_factory(password=right)
    config = write_config(tmp_path, port=server.port, password=wrong)
    pool = start_pool(pools, tmp_path, config)
    pool.wait_for_log("refused the password", count=2, timeout=20)
    assert pool.stop() == 0
    everything = pool.log() + pool.output()
    assert right not in everything and wrong not in everything
    assert "Start service" not in everything  # no worker was started against it
    # Backed off (1, 2, 4 s ...), not a tight loop.
    assert everything.count("refused the password") < 10


def test_redis_unreachable_at_start_then_up(
    tmp_path: Path,
    pools: list[Pool],
) -> None:
    server = EmbeddedRedis()
    try:
        server.start()
        port = server.port
        server.stop()
        config = write_config(tmp_path, port=port, workers=1)
        pool = start_pool(pools, tmp_path, config)
        pool.wait_for_log("unreachable.*retrying in", timeout=20)
        server.start()
        client = server.client()
        wait_until(lambda: worker_heartbeats(client), timeout=40, what="a worker")
        client.lpush(keys.QUEUE, encode("tuitop.noop", {}))
        wait_until(lambda: nothing_pending(client), what="the message done")
        assert pool.stop() == 0
    finally:
        server.close()


def test_redis_restarted_under_the_pool(
    tmp_path: Path,
    pools: list[Pool],
    redis_server_factory: RedisServerFactory,
) -> None:
    server = redis_server_factory(appendonly=True)
    client = server.client()
    config = write_config(tmp_path, port=server.port, workers=2)
    pool = start_pool(pools, tmp_path, config, "--handlers", "tests.handlers_for_tests")
    wait_until(lambda: len(worker_heartbeats(client)) == 2, what="2 workers")
    server.kill()
    pool.wait_for_log("unreachable", timeout=20)
    server.start()
    client = server.client()
    client.lpush(keys.QUEUE, *[encode("test.count", {"id": i}) for i in range(5)])
    wait_until(lambda: client.llen(RUNS_KEY) == 5, timeout=40, what="5 runs after the restart")
    pool.wait_for_log("Redis is back", timeout=20)
    assert pool.stop() == 0


def test_no_redis_server_means_no_worker_until_the_config_says_where(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    config = tmp_path / "local.inc"
    config.write_text("<?php\n$sys_nb_backend_workers = 3;\n")
    pool = start_pool(pools, tmp_path, config)
    pool.wait_for_log(r"Redis is not configured \(\$redis_server is empty\)")
    time.sleep(1)
    family = psutil.Process(pool.pid).children(recursive=True)
    assert not [p for p in family if "forkserver" in " ".join(p.cmdline())]
    assert "Start service" not in pool.log()
    write_config(tmp_path, port=redis_server.port, workers=2)
    pool.signal(signal.SIGHUP)
    pool.wait_for_log("config: Redis at 127.0.0.1:")
    wait_until(lambda: len(worker_heartbeats(redis_client)) == 2, what="2 workers")
    assert pool.stop() == 0


def test_sighup_rereads_the_files_and_keeps_the_last_good_config(
    tmp_path: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    pool = start_pool(pools, tmp_path, config)
    wait_until(lambda: len(worker_heartbeats(redis_client)) == 1, what="1 worker")
    write_config(tmp_path, port=redis_server.port, workers=3)
    pool.signal(signal.SIGHUP)
    pool.wait_for_log("config: workers 1 → 3")
    wait_until(lambda: len(worker_heartbeats(redis_client)) == 3, what="3 workers")
    config.write_text(config.read_text().replace("$sys_nb_backend_workers = 3;", "$sys_nb_ = ;"))
    pool.signal(signal.SIGHUP)
    pool.wait_for_log(r"config error, the last good configuration stays: .*local\.inc:\d+:\d+")
    time.sleep(1.5)
    assert len(worker_heartbeats(redis_client)) == 3
    # A Redis that does not answer: the pool tries to move, but keeps its workers on this
    # one until a replacement can start there, and says why.
    write_config(tmp_path, port=redis_server.port + 1, workers=3)
    pool.signal(signal.SIGHUP)
    pool.wait_for_log("the pool moves now")
    pool.wait_for_log("unreachable.*retrying in")
    time.sleep(1.5)
    assert len(worker_heartbeats(redis_client)) == 3
    assert pool.stop() == 0


def test_a_lost_forkserver_loses_no_message_and_the_pool_goes_on(
    tmp_path: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    pool = start_pool(pools, tmp_path, config, "--handlers", "tests.handlers_for_tests")
    push_all(redis_client, [encode("test.sleep", {"id": "during", "seconds": 2})])
    wait_until(lambda: redis_client.llen(RUNS_KEY) == 1, what="the job to start")
    forkserver = [
        p
        for p in psutil.Process(pool.pid).children()
        if "multiprocessing.forkserver" in " ".join(p.cmdline())
    ]
    assert len(forkserver) == 1
    forkserver[0].kill()
    pool.wait_for_log("Lost the forkserver of worker")
    # The worker finishes its job (it was not interrupted), then a new one takes over.
    pool.wait_for_log(r"Worker \S+ ended \(its exit code was lost", timeout=20)
    push_all(redis_client, [encode("test.count", {"id": "after"})])
    wait_until(lambda: redis_client.llen(RUNS_KEY) == 2, what="a run by the new worker")
    wait_until(lambda: nothing_pending(redis_client), what="an empty queue")
    assert [r.decode() for r in redis_client.lrange(RUNS_KEY, 0, -1)] == ["during", "after"]
    assert redis_client.llen(keys.DEAD_LETTERS) == 0
    assert pool.stop() == 0


def test_one_hostile_message_never_stops_the_service(
    tmp_path: Path,
    pools: list[Pool],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    smtp_server: SmtpServer,
) -> None:
    """Issue 10, case 1: a payload nested 3,000 deep made json raise RecursionError, the
    worker crash, and the message come back untried, forever, stalling all behind it."""
    config = write_config(tmp_path, port=redis_server.port, smtp_port=smtp_server.port)
    pool = start_pool(pools, tmp_path, config)
    deep = b'{"event_name":"tuleap.tracker.artifact","payload":' + b"[" * 3000 + b"]" * 3000 + b"}"
    huge_number = b'{"event_name":"tuleap.tracker.artifact","payload":{"n":1e400}}'
    push_all(redis_client, [deep, huge_number, notification(1)])
    smtp_server.wait_for(1)  # what came behind them went through
    wait_until(lambda: redis_client.llen(keys.DEAD_LETTERS) == 2, what="2 dead letters")
    reasons = sorted(
        parse_dead_letter(e).reason for e in redis_client.lrange(keys.DEAD_LETTERS, 0, -1)
    )
    assert "nested too deep" in reasons[1] and "out of range" in reasons[0]
    assert "crashed" not in pool.log() and "Traceback" not in pool.log()
    # The views read the queue without a hitch meanwhile: the snapshot decodes the oldest.
    redis_client.lpush(keys.QUEUE, deep)
    assert take_snapshot(redis_client).queue.waiting <= 1
    assert pool.stop() == 0


def test_a_worker_frozen_past_its_heartbeat_reruns_at_most_what_it_held(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """Issue 10, case 3, with a real freeze: SIGSTOP past the heartbeat, the list recovered
    as another pool would, SIGCONT. What runs twice is at most what its list held then:
    the fast jobs it had finished and not yet acked (acks go by the batch), and the one it
    was in; what it had not started it leaves to the retry (test_worker shows that part)."""
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    pool = start_pool(
        pools, tmp_path, config, "--handlers", "tests.handlers_for_tests", *FAST_RETRY
    )
    [worker_id] = wait_until(lambda: list(worker_heartbeats(redis_client)), what="the worker")
    pid = int(worker_heartbeats(redis_client)[worker_id]["pid"])
    push_all(redis_client, [encode("test.count", {"id": n}) for n in range(400)])
    wait_until(lambda: redis_client.llen(RUNS_KEY) >= 50, what="it is running them")
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: not alive_in(redis_client, [worker_id])[0], 20, "its heartbeat to go")
        held = redis_client.llen(keys.processing_list(worker_id))
        Queue(redis_client).recover(worker_id, "stopped beating", unless_beating=True)
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: nothing_pending(redis_client), 30, what="everything done")
    runs = Counter(value.decode() for value in redis_client.lrange(RUNS_KEY, 0, -1))
    assert set(runs) == {str(n) for n in range(400)}  # none lost
    twice = [n for n, count in runs.items() if count > 1]
    assert len(twice) <= held <= 32 + 1, (twice, held)  # a batch at most, and the one in hand
    assert "its messages were recovered by another while it was silent" in pool.log()
    assert pool.stop() == 0


def test_a_pool_that_lost_its_name_in_an_outage_stops_its_workers(
    tmp_path: Path, pools: list[Pool], redis_server_factory: RedisServerFactory
) -> None:
    """Issue 10, case 9: a pool whose name claim lapsed while Redis was away, and another
    pool took the name meanwhile, kept its workers serving under it beside the other."""
    server = redis_server_factory(appendonly=True)
    config = write_config(tmp_path, port=server.port, workers=1)
    pool = start_pool(pools, tmp_path, config, "--pool-name", "forge")
    client = server.client()
    wait_until(lambda: worker_heartbeats(client), what="its worker")
    # The pool is cut off (frozen here, so that it learns nothing meanwhile); its claim
    # lapses and another pool named forge takes the name; Redis even restarts. When the
    # pool is back, the name is another's (kept on disk through the restart).
    client.config_set("appendfsync", "always")
    os.kill(pool.pid, signal.SIGSTOP)
    try:
        client.set(keys.pool("forge") + ":owner", "elsewhere:1:1", ex=600)
        server.kill()
    finally:
        os.kill(pool.pid, signal.SIGCONT)
    # The pool finds Redis gone itself, then reconnects to find the name another's.
    pool.wait_for_log(rf"\[{pool.pid}\] \[error\] Redis at .* unreachable", timeout=20)
    server.start()
    client = server.client()
    pool.wait_for_log("Another pool named forge is running", timeout=30)
    pool.wait_for_log(
        r"Stopping worker forge/0#\d+ after its current job \(the pool lost its name\)"
    )
    wait_until(lambda: not worker_heartbeats(client), 20, "no worker of it serving")
    client.close()
    assert pool.stop() == 0


def test_pools_long_gone_are_forgotten(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """Issue 10, case 9: tuitop:pools only grew, and every snapshot reads each name."""
    redis_client.sadd(keys.POOLS, *[f"old-{n}" for n in range(50)])
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    pool = start_pool(pools, tmp_path, config, "--pool-name", "live")
    wait_until(
        lambda: redis_client.smembers(keys.POOLS) == {b"live"}, 20, "only the live pool left"
    )
    assert pool.stop() == 0


def test_what_tuleaps_stopped_workers_left_is_run_and_a_live_ones_list_is_not(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """Issue 10, case 2: what Tuleap's own workers held when they were stopped to hand
    over to tuitop (app_user_events-processing-N) was never run."""
    left = [encode("test.count", {"id": f"left{n}"}) for n in range(2)]
    redis_client.lpush(keys.processing_list("3"), *left)  # worker 3, gone for good
    live = keys.processing_list("4")  # worker 4 runs on another host: its list moves
    redis_client.lpush(live, encode("test.count", {"id": "live0"}))
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    pool = start_pool(
        pools, tmp_path, config, "--handlers", "tests.handlers_for_tests",
        "--tuleap-list-timeout", "2", *FAST_RETRY,
    )  # fmt: skip
    deadline = time.monotonic() + 15
    n = 0
    while time.monotonic() < deadline and redis_client.llen(RUNS_KEY) < 2:
        n += 1  # worker 4 at work: one message done, the next taken
        redis_client.rpop(live)
        redis_client.lpush(live, encode("test.count", {"id": f"live{n}"}))
        time.sleep(0.5)
    runs = sorted(value.decode() for value in redis_client.lrange(RUNS_KEY, 0, -1))
    assert runs == ["left0", "left1"]  # each once, with one more try
    assert redis_client.llen(live) == 1  # the live worker's own is left alone
    assert "left by Tuleap's worker 3" in pool.log()
    assert pool.stop() == 0


def test_a_lone_surrogate_never_crashes_a_worker_nor_sticks(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    pool = start_pool(pools, tmp_path, config, *FAST_RETRY)
    surrogate = b'{"event_name":"\\ud800","payload":{},"_queued_total":0}'
    push_all(redis_client, [surrogate, encode("tuitop.noop", {})])
    wait_until(lambda: nothing_pending(redis_client), 30, what="nothing pending")
    assert redis_client.llen(keys.DEAD_LETTERS) == 1
    assert "crashed" not in pool.log()
    assert (
        "UTF-16 surrogate"
        in parse_dead_letter(redis_client.lindex(keys.DEAD_LETTERS, 0) or b"").reason
    )
    assert pool.stop() == 0


def test_a_set_member_that_is_not_utf8_stops_no_recovery(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """Anyone may SADD to tuitop's sets: such a member made every recovery scan fail
    before the orphans (a dead host's workers were never recovered)."""
    redis_client.sadd(keys.POOLS, b"\xff")
    redis_client.sadd(keys.WORKERS, b"\xfe")
    dead = "elsewhere/0#999999"
    redis_client.sadd(keys.WORKERS, dead)
    redis_client.lpush(keys.processing_list(dead), encode("tuitop.noop", {"id": "x"}))
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    pool = start_pool(pools, tmp_path, config, *FAST_RETRY)
    wait_until(lambda: redis_client.llen(keys.processing_list(dead)) == 0, 15, "recovered")
    wait_until(lambda: not redis_client.sismember(keys.POOLS, b"\xff"), 15, "junk removed")
    assert not redis_client.sismember(keys.WORKERS, b"\xfe")
    assert "Unexpected error" not in pool.log() and "UnicodeDecodeError" not in pool.log()
    assert pool.stop() == 0
