"""``tuitop ctl``: pools running as other processes, commanded through the real Redis (and
the real database): scale, pause and resume (a pool, a lane), reload, stop; replies and
the pool's log say who asked what; hostile mailboxes harm nothing."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import RedisServerFactory
from tests.pool import (
    Pool,
    beat,
    ctl,
    run_tuitop,
    running,
    skewed_env,
    start_named_pool,
    wait_until,
    write_config,
)
from tests.tuleap import Tuleap, start_db_pool
from tests.tuleapdb import count, database_inc, enqueue, fresh_database
from tuitop.backends.redis import keys
from tuitop.embedded.mariadbserver import DatabaseServer
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.message import encode

LANES = "$tuitop_lanes = 'bulk(1): test.sleep';"
RUNS = "test:runs"


def runs(client: redis.Redis) -> list[str]:
    return [run.decode() for run in client.lrange(RUNS, 0, -1)]


@pytest.fixture
def config(tmp_path: Path, redis_server: EmbeddedRedis) -> Path:
    return write_config(tmp_path, port=redis_server.port, workers=2, extra=LANES)


def test_scale_a_pool_running_as_another_process(
    tmp_path: Path, pools: list[Pool], config: Path, redis_client: redis.Redis
) -> None:
    first = start_named_pool(pools, tmp_path, config, "alpha")
    start_named_pool(pools, tmp_path, config, "beta")
    running(redis_client, "alpha", 2)
    running(redis_client, "beta", 2)
    code, out = ctl(config, "scale", "+1")
    assert code == 2 and "2 pools run (alpha, beta)" in out  # which one?
    code, out = ctl(config, "scale", "+2", "--pool", "alpha")
    assert code == 0, out
    assert out.strip() == "alpha: workers 2 → 4 for this session"
    running(redis_client, "alpha", 4)
    assert beat(redis_client, "beta")["wanted"] == "2"
    code, out = ctl(config, "workers", "1", "--all")
    assert code == 0, out
    assert "alpha: workers 4 → 1" in out and "beta: workers 2 → 1" in out
    running(redis_client, "alpha", 1)
    running(redis_client, "beta", 1)
    log = first.wait_for_log(r"Command from \S+@\S+ \(tuitop ctl\): workers 1: workers 4 → 1")
    assert "scale +2: workers 2 → 4 for this session" in log


def test_pause_and_resume_lose_nothing(
    tmp_path: Path, pools: list[Pool], config: Path, redis_client: redis.Redis
) -> None:
    pool = start_named_pool(pools, tmp_path, config, "alpha")
    running(redis_client, "alpha", 2)
    # A job running when the pause comes finishes; nothing more is taken.
    redis_client.lpush(keys.QUEUE, encode("test.slow", {"id": "long", "seconds": 1.5}))
    wait_until(lambda: "start:long" in runs(redis_client), what="the long job to start")
    code, out = ctl(config, "pause")
    assert code == 0 and "alpha: paused" in out, out
    for index in range(5):
        redis_client.lpush(keys.QUEUE, encode("test.count", {"id": f"n{index}"}))
    wait_until(lambda: "end:long" in runs(redis_client), what="the long job to end")
    running(redis_client, "alpha", 0)
    assert beat(redis_client, "alpha")["paused"] == "1"
    assert redis_client.llen(keys.QUEUE) == 5
    code, out = ctl(config, "pause")
    assert code == 0 and "already paused" in out
    code, out = ctl(config, "resume")
    assert code == 0 and "resumed: 2 worker(s) start" in out
    wait_until(lambda: len(runs(redis_client)) == 7, what="the 5 waiting to run")
    assert set(runs(redis_client)) == {"start:long", "end:long"} | {f"n{i}" for i in range(5)}
    assert pool.stop() == 0


def test_a_paused_lane_waits_while_the_default_lane_runs(
    tmp_path: Path, pools: list[Pool], config: Path, redis_client: redis.Redis
) -> None:
    start_named_pool(pools, tmp_path, config, "alpha")
    running(redis_client, "alpha", 2)
    code, out = ctl(config, "pause", "bulk")
    assert code == 0 and "lane bulk waits" in out, out
    wait_until(lambda: beat(redis_client, "alpha").get("paused_lanes") == "bulk", what="beat")
    wait_until(
        lambda: (
            all(
                b"bulk" not in (redis_client.hget(keys.heartbeat(w.decode()), "serves") or b"")
                for w in redis_client.smembers(keys.WORKERS)
            )
            and beat(redis_client, "alpha").get("running") == "2"
        ),
        what="no worker serving bulk",
    )
    redis_client.lpush(keys.QUEUE, encode("test.sleep", {"id": "bulk1", "seconds": 0}))
    redis_client.lpush(keys.QUEUE, encode("test.count", {"id": "fast1"}))
    wait_until(lambda: "fast1" in runs(redis_client), what="the default lane's message")
    wait_until(lambda: redis_client.llen(keys.lane_list("bulk")) == 1, what="bulk waiting")
    assert "bulk1" not in runs(redis_client)
    code, out = ctl(config, "pause", "latency_10s")
    assert code == 1 and "the default lane: pause the pool instead" in out
    code, out = ctl(config, "resume", "bulk")
    assert code == 0, out
    wait_until(lambda: "bulk1" in runs(redis_client), what="the bulk message to run")


def test_reload_and_stop_from_afar(
    tmp_path: Path, pools: list[Pool], config: Path, redis_client: redis.Redis
) -> None:
    pool = start_named_pool(pools, tmp_path, config, "alpha")
    running(redis_client, "alpha", 2)
    config.write_text(config.read_text().replace("= 2;", "= 3;"))
    code, out = ctl(config, "reload")
    assert code == 0 and "read again" in out, out
    running(redis_client, "alpha", 3)
    good = config.read_text()
    ours = tmp_path / "ctl.inc"  # the pool's file breaks; ctl reads a good copy
    ours.write_text(good)
    config.write_text(good + "$sys_nb_backend_workers = ;\n")
    code, out = ctl(ours, "reload", "--pool", "alpha")
    assert code == 1 and "refused: the files do not load" in out, out
    assert "expected" in out  # where and what
    config.write_text(good)
    code, out = ctl(config, "stop")
    assert code == 0 and "stopping warm" in out, out
    assert pool.wait(30) == 0


def test_a_pool_that_is_not_there_gives_no_reply(
    tmp_path: Path, config: Path, redis_client: redis.Redis
) -> None:
    code, out = ctl(config, "reload")
    assert code == 1 and "no live pool" in out
    code, out = ctl(config, "reload", "--pool", "ghost", "--timeout", "0.5")
    assert code == 1 and "no live pool named ghost: nothing sent" in out
    assert not redis_client.exists(keys.control("ghost"))


@contextlib.contextmanager
def frozen(pool: Pool) -> Iterator[None]:
    """While in the block, ``pool``'s process is stopped (SIGSTOP): it reads no command."""
    pool.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        pool.signal(signal.SIGCONT)


def test_an_unanswered_command_is_withdrawn_and_its_retry_obeyed_once(
    tmp_path: Path, pools: list[Pool], config: Path, redis_client: redis.Redis
) -> None:
    pool = start_named_pool(pools, tmp_path, config, "alpha")
    running(redis_client, "alpha", 2)
    with frozen(pool):
        code, out = ctl(config, "scale", "+1", "--timeout", "1")
        assert code == 1 and "alpha: no reply within 1 s: withdrawn unread" in out, out
        assert not redis_client.exists(keys.control("alpha"))
    # The operator tries again: one worker more, not two.
    code, out = ctl(config, "scale", "+1")
    assert code == 0 and "workers 2 → 3" in out, out
    running(redis_client, "alpha", 3)
    time.sleep(2.5)  # two ticks: an order left in the mailbox would be obeyed by now
    assert beat(redis_client, "alpha")["wanted"] == "3"
    assert pool.log().count("Command from") == 1


def test_a_stop_to_a_dead_pools_name_does_not_stop_the_next_pool_of_that_name(
    tmp_path: Path, pools: list[Pool], config: Path, redis_client: redis.Redis
) -> None:
    first = start_named_pool(pools, tmp_path, config, "alpha")
    running(redis_client, "alpha", 2)
    first.signal(signal.SIGKILL)  # its heartbeat lives on for a while: ctl still sees it
    sender = subprocess.Popen(
        [sys.executable, "-m", "tuitop", "--config", str(config), "ctl", "stop", "--pool",
         "alpha", "--timeout", "60"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: redis_client.llen(keys.control("alpha")) == 1, what="the stop sent")
    finally:
        sender.kill()  # killed while it waits: it never withdraws its command
        sender.wait()
    second = start_named_pool(pools, tmp_path, config, "alpha2", "--pool-name", "alpha")
    second.wait_for_log(r"was sent to another run of pool alpha \(.*\): not obeyed", timeout=30)
    running(redis_client, "alpha", 2)
    assert second.process.poll() is None and "stopping warm" not in second.log()
    code, out = ctl(config, "stop")
    assert code == 0 and "stopping warm" in out, out
    assert second.wait(30) == 0


def test_usage_errors(config: Path) -> None:
    for args, said in [
        (("scale", "3"), "+N or -N"),
        (("scale", "+x"), "not a whole number"),
        (("workers",), "not a whole number"),
        (("reload", "now"), "takes no argument"),
        (("dance",), "invalid choice"),
    ]:
        code, out = ctl(config, *args)
        assert code == 2 and said in out, (args, out)


def test_hostile_commands_harm_nothing(
    tmp_path: Path, pools: list[Pool], config: Path, redis_client: redis.Redis
) -> None:
    pool = start_named_pool(pools, tmp_path, config, "alpha")
    running(redis_client, "alpha", 2)
    mailbox = keys.control("alpha")
    redis_client.rpush(
        mailbox,
        b"not json",
        b"[1]",
        b'{"action": "scale", "value": true, "id": "x"}',
        b'{"action": "scale", "value": 1e308, "id": "x"}',
        b'{"action": "workers", "value": -5, "id": "x"}',
        b'{"action": "rm -rf", "id": "x"}',
        b'{"action": "reload", "by": "eve\\n2026-01-01 [1] [error] forged", "id": "y"}',
        b'{"action": "workers", "value": 99999999999, "id": "z"}',
    )
    log = pool.wait_for_log(r"Command from eve\?2026")
    assert log.count("A command sent to this pool is refused") == 7
    assert "\n2026-01-01 [1] [error] forged" not in log
    # A command that names its id is answered, even refused.
    wait_until(lambda: redis_client.llen(keys.control_reply("z")) == 1, what="the reply")
    reply = json.loads(redis_client.lpop(keys.control_reply("z")))
    assert reply["ok"] is False and "at most 1024" in reply["said"]
    assert beat(redis_client, "alpha")["wanted"] == "2"
    assert pool.process is not None and pool.process.poll() is None
    assert ctl(config, "workers", "2")[0] == 0
    running(redis_client, "alpha", 2)
    pool.signal(signal.SIGTERM)
    assert pool.wait(30) == 0


def test_the_database_queue_is_commanded_the_same(
    tmp_path: Path, pools: list[Pool], database_server: DatabaseServer
) -> None:
    database = fresh_database(database_server)
    tuleap = Tuleap(tmp_path)
    config = database_inc(tmp_path, database, workers=1)
    pool = start_db_pool(pools, tmp_path, tuleap, config, "--pool-name", "dbpool")
    code, out = ctl(config, "scale", "+1")
    assert code == 0 and out.startswith("dbpool: workers 1 → 2 for this session\n"), out
    code, out = ctl(config, "pause")
    assert code == 0 and "paused" in out, out
    enqueue(database, "tracker.artifact_change", {"id": 1})
    wait_until(lambda: check_waiting(config) == 1, what="the row to wait")
    code, out = ctl(config, "resume")
    assert code == 0, out
    wait_until(lambda: count(database, "async_events") == 0, what="the row to run")
    code, out = ctl(config, "stop")
    assert code == 0 and "stopping warm" in out
    assert pool.wait(30) == 0


def check_waiting(config: Path) -> int:
    done = run_tuitop("--config", str(config), "check", "--json")
    return int(json.loads(done.stdout)["perfdata"]["waiting"]["value"])


def test_a_command_whose_id_is_not_text_a_key_takes_loses_nothing_after_it(
    tmp_path: Path, pools: list[Pool], config: Path, redis_client: redis.Redis
) -> None:
    # An id no key can hold (a lone surrogate: not UTF-8), then a good command in the
    # same tick: the first is refused, the second obeyed and answered.
    pool = start_named_pool(pools, tmp_path, config, "alpha")
    running(redis_client, "alpha", 2)
    redis_client.rpush(
        keys.control("alpha"),
        b'{"action": "reload", "id": "\\ud800"}',
        b'{"action": "workers", "value": 3, "id": "after"}',
    )
    wait_until(lambda: redis_client.llen(keys.control_reply("after")) == 1, what="the reply")
    running(redis_client, "alpha", 3)
    assert "Unexpected error" not in pool.log()


def test_a_reply_key_taken_by_something_else_loses_nothing(
    tmp_path: Path, pools: list[Pool], config: Path, redis_client: redis.Redis
) -> None:
    # A key where the reply goes that is not a list (left there by anyone): the reply
    # is written anyway, the link stays up, and the next command is obeyed.
    pool = start_named_pool(pools, tmp_path, config, "alpha")
    running(redis_client, "alpha", 2)
    redis_client.set(keys.control_reply("taken"), b"a string")
    redis_client.rpush(
        keys.control("alpha"),
        b'{"action": "reload", "id": "taken"}',
        b'{"action": "workers", "value": 3, "id": "after"}',
    )
    wait_until(lambda: redis_client.llen(keys.control_reply("after")) == 1, what="the reply")
    running(redis_client, "alpha", 3)
    reply = json.loads(redis_client.lpop(keys.control_reply("taken")))
    assert reply["ok"] is True and "read again" in reply["said"]
    assert "retrying" not in pool.log()


def test_an_order_older_than_a_minute_is_not_obeyed(
    tmp_path: Path, pools: list[Pool], config: Path, redis_client: redis.Redis
) -> None:
    # A stop sent to a pool that was down, two minutes ago; a later command to it kept
    # the mailbox (one key, one TTL) alive. The pool starting now must not stop.
    old = time.time() - 120
    redis_client.rpush(
        keys.control("alpha"),
        json.dumps({"action": "stop", "id": "old", "at": old, "by": "bob@h"}).encode(),
        json.dumps({"action": "workers", "value": 3, "id": "new", "at": time.time()}).encode(),
    )
    pool = start_named_pool(pools, tmp_path, config, "alpha")
    wait_until(lambda: redis_client.llen(keys.control_reply("new")) == 1, what="the reply")
    running(redis_client, "alpha", 3)
    log = pool.wait_for_log(r"expired")
    assert "stopping warm" not in log
    assert pool.process is not None and pool.process.poll() is None
    assert pool.stop() == 0


def test_a_paused_lane_the_files_drop_does_not_keep_its_messages(
    tmp_path: Path, pools: list[Pool], config: Path, redis_client: redis.Redis
) -> None:
    # bulk is paused, a message waits in its list; a reload drops the lane. Nothing can
    # resume it now ('this pool has no lane bulk'): the pause must go with the lane, and
    # what waited there go back to the queue, to be run.
    pool = start_named_pool(pools, tmp_path, config, "alpha")
    running(redis_client, "alpha", 2)
    code, out = ctl(config, "pause", "bulk")
    assert code == 0, out
    redis_client.lpush(keys.QUEUE, encode("test.sleep", {"id": "bulk1", "seconds": 0}))
    wait_until(lambda: redis_client.llen(keys.lane_list("bulk")) == 1, what="bulk waiting")
    config.write_text(config.read_text().replace(LANES, "$tuitop_lanes = '';"))
    code, out = ctl(config, "reload")
    assert code == 0, out
    wait_until(lambda: "bulk1" in runs(redis_client), timeout=30, what="the bulk message")
    wait_until(lambda: beat(redis_client, "alpha").get("paused_lanes") == "", what="beat")
    code, line = run_check(config)
    assert "pauses lane" not in line, line
    assert pool.stop() == 0


def run_check(config: Path) -> tuple[int, str]:
    done = run_tuitop("--config", str(config), "check", "--no-redis-settings")
    return done.returncode, done.stdout


def test_a_reload_from_afar_that_moves_the_pool_to_another_redis(
    tmp_path: Path,
    pools: list[Pool],
    config: Path,
    redis_client: redis.Redis,
    redis_server_factory: RedisServerFactory,
) -> None:
    # The files now name another Redis and 'ctl reload' comes before the pool's watcher
    # has seen the save (an admin's "sed -i … && tuitop ctl reload"; here the pool is
    # held still meanwhile): the pool moves there, without an error in its loop.
    pool = start_named_pool(pools, tmp_path, config, "alpha")
    running(redis_client, "alpha", 2)
    other = redis_server_factory()
    port = redis_client.connection_pool.connection_kwargs["port"]
    pool.signal(signal.SIGSTOP)
    try:
        config.write_text(config.read_text().replace(f"= {port};", f"= {other.port};"))
        command = {"action": "reload", "id": "moved", "at": time.time(), "by": "me@here"}
        redis_client.rpush(keys.control("alpha"), json.dumps(command).encode())
        time.sleep(1.5)  # past the loop's tick: it reads its mailbox first thing
    finally:
        pool.signal(signal.SIGCONT)
    log = pool.wait_for_log(r"Command from me@here: reload")
    running(other.client(), "alpha", 2)
    assert "Unexpected error" not in pool.log(), log
    assert pool.stop() == 0


def test_a_mailbox_that_is_not_a_list_does_not_cut_the_pool_off(
    tmp_path: Path, pools: list[Pool], config: Path, redis_client: redis.Redis
) -> None:
    # Anyone may write the mailbox's key: a string there made every read of it fail
    # (WRONGTYPE), which the pool took for Redis being away — link dropped, back-off
    # up to 30 s, its heartbeat (10 s) expired, no worker started meanwhile.
    pool = start_named_pool(pools, tmp_path, config, "alpha")
    running(redis_client, "alpha", 2)
    redis_client.set(keys.control("alpha"), b"not a mailbox")
    time.sleep(3)
    assert "retrying" not in pool.log(), pool.log()
    code, out = ctl(config, "workers", "3")
    assert code == 0, out
    running(redis_client, "alpha", 3)
    assert pool.stop() == 0


def test_the_longest_pool_name_serves_the_database_queue(
    tmp_path: Path, pools: list[Pool], database_server: DatabaseServer
) -> None:
    # --pool-name takes what a host name may be; on the database, a worker's id (the
    # name, '/slot#pid') must fit its columns all the same, or no worker registers.
    database = fresh_database(database_server)
    tuleap = Tuleap(tmp_path)
    config = database_inc(tmp_path, database, workers=1)
    done = run_tuitop("--config", str(config), "--no-ui", "--pool-name", "n" * 201)
    assert done.returncode == 2 and "1 to 200" in done.stderr, done.stderr
    name = "n" * 200
    pool = start_db_pool(pools, tmp_path, tuleap, config, "--pool-name", name)
    enqueue(database, "tracker.artifact_change", {"id": 1})
    wait_until(lambda: count(database, "async_events") == 0, what="the row to run")
    wait_until(lambda: len(tuleap.runs("end")) == 1, what="its task to end")
    code, out = ctl(config, "workers", "2")
    assert code == 0, out
    assert pool.stop() == 0


def lpop_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_lpop", {}).get("calls", 0))


def test_an_idle_pool_reads_its_mailbox_when_a_command_comes_not_every_tick(
    tmp_path: Path, pools: list[Pool], config: Path, redis_client: redis.Redis
) -> None:
    """The mailbox was read every tick (1 command a second, an idle pool's largest item);
    a blocking watch now rings the loop when a command lands: answered at once, and read
    otherwise at the heartbeat's pace (every 3 s) only."""
    pool = start_named_pool(pools, tmp_path, config, "alpha")
    running(redis_client, "alpha", 2)
    time.sleep(1.5)  # the pool's watch is up
    before = lpop_calls(redis_client)
    time.sleep(6.2)
    reads = lpop_calls(redis_client) - before
    assert 1 <= reads <= 3, reads  # every tick would be 6
    started = time.monotonic()
    code, out = ctl(config, "workers", "3")
    answered = time.monotonic() - started
    assert code == 0, out
    running(redis_client, "alpha", 3)
    # The CLI's own start is most of this; a read at the heartbeat's pace would be ~1.5 s.
    assert answered < 2.5, answered
    assert pool.stop() == 0


def test_a_mailbox_watch_cut_off_loses_no_command(
    tmp_path: Path, pools: list[Pool], config: Path, redis_client: redis.Redis
) -> None:
    """Its connection killed (a proxy, CLIENT KILL, a failover): commands are still read —
    every tick until it watches again — and none is lost."""
    pool = start_named_pool(pools, tmp_path, config, "alpha")
    running(redis_client, "alpha", 2)
    watch = "tuitop:pool:alpha:mailbox"
    wait_until(
        lambda: any(c["name"] == watch for c in redis_client.client_list()),
        what="the mailbox watch connected",
    )
    killed = [c["id"] for c in redis_client.client_list() if c["name"] == watch]
    for client_id in killed:
        redis_client.execute_command("CLIENT", "KILL", "ID", client_id)
    code, out = ctl(config, "workers", "3")
    assert code == 0, out
    running(redis_client, "alpha", 3)
    wait_until(
        lambda: any(c["name"] == watch for c in redis_client.client_list()),
        what="the mailbox watch back",
    )
    code, out = ctl(config, "workers", "1")
    assert code == 0, out
    running(redis_client, "alpha", 1)
    assert "Unexpected error" not in pool.log(), pool.log()
    assert pool.stop() == 0


def test_an_unanswered_command_is_withdrawn_on_the_database_too(
    tmp_path: Path, pools: list[Pool], database_server: DatabaseServer
) -> None:
    database = fresh_database(database_server)
    config = database_inc(tmp_path, database, workers=1)
    pool = start_db_pool(pools, tmp_path, Tuleap(tmp_path), config, "--pool-name", "dbpool")
    wait_until(lambda: ctl(config, "scale", "+0")[0] == 0, what="the pool answering")
    with frozen(pool):
        code, out = ctl(config, "scale", "+1", "--timeout", "1")
        assert code == 1 and "withdrawn unread, nothing was done" in out, out
        assert count(database, "tuitop_control") == 0
    code, out = ctl(config, "scale", "+1")
    assert code == 0 and "workers 1 → 2" in out, out
    time.sleep(2.5)
    code, out = ctl(config, "scale", "+0")
    assert "workers stay 2" in out, out


def test_a_pool_whose_clock_is_ahead_of_the_senders_obeys_ctl_on_redis(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis
) -> None:
    """On Redis, where the pool judged a command's age by the sender's wall
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
