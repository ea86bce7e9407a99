"""Live reconfiguration, end to end: save the config file any way an admin does; the real
``tuitop --no-ui`` follows within a second, losing and interrupting nothing."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from tests.conftest import RedisServerFactory
from tests.handlers_for_tests import RUNS_KEY
from tests.pool import Pool, processing_lists, wait_until, worker_heartbeats, write_config
from tuitop.backends.redis import keys
from tuitop.config import load_config
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.message import encode
from tuitop.notification import Mail, Notification
from tuitop.notify import QUEUED, NotificationError, Notifier


def start(pools: list[Pool], tmp_path: Path, config: Path, *args: str) -> Pool:
    pool = Pool(tmp_path, config, "--handlers", "tests.handlers_for_tests", *args).start()
    pools.append(pool)
    return pool


def pids(client: redis.Redis) -> set[str]:
    return {beat["pid"] for beat in worker_heartbeats(client).values()}


def wait_for_workers(client: redis.Redis, count: int) -> set[str]:
    wait_until(lambda: len(worker_heartbeats(client)) == count, timeout=15, what=f"{count} workers")
    return pids(client)


def config_text(port: int, workers: int, level: str = "debug", scope: str = "") -> str:
    return (
        "<?php\n$redis_server = '127.0.0.1';\n"
        f"$redis_port = {port};\n$sys_nb_backend_workers = {workers};\n"
        f"$sys_logger_level = '{level}';\n$sys_async_emails = '{scope}';\n"
        "$sys_noreply = 'noreply@example.com';\n"
    )


def test_every_way_of_saving_is_seen(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    port = redis_server.port
    config = tmp_path / "local.inc"
    config.write_text(config_text(port, 2))
    pool = start(pools, tmp_path, config)
    first = wait_for_workers(redis_client, 2)

    # 1. Written in place: up to 4; the two running workers stay.
    config.write_text(config_text(port, 4))
    pool.wait_for_log("config: workers 2 → 4")
    assert first <= wait_for_workers(redis_client, 4)

    # 2. An editor's save: a new file renamed over the old one. Down to 1, warm.
    new = tmp_path / ".local.inc.swp"
    new.write_text(config_text(port, 1))
    os.replace(new, config)
    pool.wait_for_log("config: workers 4 → 1")
    remaining = wait_for_workers(redis_client, 1)
    assert remaining <= first | pids(redis_client)

    # 3. sed -i (a new inode too).
    subprocess.run(["sed", "-i", "s/= 1;/= 3;/", str(config)], check=True)
    pool.wait_for_log("config: workers 1 → 3")
    wait_for_workers(redis_client, 3)

    # 4. Deleted, then created again: the missing file is an error that keeps the last
    #    good config; the new file applies.
    config.unlink()
    pool.wait_for_log("config error, the last good configuration stays: .*cannot read")
    config.write_text(config_text(port, 2))
    pool.wait_for_log("config: workers 3 → 2")
    wait_for_workers(redis_client, 2)
    assert pool.stop() == 0


def test_a_symlink_swapped_by_config_management_is_seen(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    port = redis_server.port
    releases = tmp_path / "releases"
    (releases / "v1").mkdir(parents=True)
    (releases / "v2").mkdir()
    (releases / "v1" / "local.inc").write_text(config_text(port, 1))
    (releases / "v2" / "local.inc").write_text(config_text(port, 3))
    config = tmp_path / "local.inc"
    config.symlink_to(releases / "v1" / "local.inc")
    pool = start(pools, tmp_path, config)
    wait_for_workers(redis_client, 1)
    swap = tmp_path / ".local.inc.new"
    swap.symlink_to(releases / "v2" / "local.inc")
    os.replace(swap, config)  # what ansible/puppet/salt do: an atomic symlink swap
    pool.wait_for_log("config: workers 1 → 3")
    wait_for_workers(redis_client, 3)
    # Now an edit of the new target, through the link's directory of releases.
    (releases / "v2" / "local.inc").write_text(config_text(port, 2))
    pool.wait_for_log("config: workers 3 → 2")
    wait_for_workers(redis_client, 2)
    assert pool.stop() == 0


def test_an_invalid_save_keeps_the_last_good_config_until_fixed(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    port = redis_server.port
    config = write_config(tmp_path, port=port, workers=2)
    pool = start(pools, tmp_path, config)
    wait_for_workers(redis_client, 2)
    config.write_text(config_text(port, 5).replace("$sys_nb_backend_workers = 5;", "$sys_nb = ;"))
    pool.wait_for_log(r"config error, the last good configuration stays: .*local\.inc:4:\d+")
    published = wait_until(
        lambda: redis_client.hget(keys.pool(socket.gethostname()), "config_error"),
        what="the error published in the pool's heartbeat",
    )
    assert b"local.inc:4:" in published
    time.sleep(1)
    assert len(worker_heartbeats(redis_client)) == 2
    # An unknown log level and a missing ${ENV} variable are refused the same way.
    config.write_text(config_text(port, 5, level="loud"))
    pool.wait_for_log("sys_logger_level must be one of")
    config.write_text(
        config_text(port, 5).replace("$sys_noreply", "$redis_password = '${NOPE_UNSET}';\n$x")
    )
    pool.wait_for_log("NOPE_UNSET, which is not set")
    assert len(worker_heartbeats(redis_client)) == 2
    config.write_text(config_text(port, 3))
    pool.wait_for_log("the error is fixed")
    pool.wait_for_log("config: workers 2 → 3")
    wait_for_workers(redis_client, 3)
    assert pool.stop() == 0


def test_scope_and_log_level_apply_live_and_producers_follow(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    port = redis_server.port
    config = tmp_path / "local.inc"
    config.write_text(config_text(port, 1, level="warning", scope="all"))
    pool = start(pools, tmp_path, config)
    wait_for_workers(redis_client, 1)
    wait_until(lambda: redis_client.hget(keys.CONFIG, "async_scope") == b"all", what="scope")
    version = int(redis_client.hget(keys.CONFIG, "version"))
    # A producer in another process, configured once (its own settings say 'all').
    notifier = Notifier(load_config([str(config)]).settings)
    notification = Notification(101, 1, 1, (Mail(("a@example.com",), "s", "t"),))
    assert notifier.notify(notification) == QUEUED

    config.write_text(config_text(port, 1, level="debug", scope="102,103"))
    pool.wait_for_log("config: async scope all → 102,103")
    pool.wait_for_log("config: log level warning → debug")
    wait_until(lambda: redis_client.hget(keys.CONFIG, "async_scope") == b"102,103", what="scope")
    assert int(redis_client.hget(keys.CONFIG, "version")) > version
    time.sleep(1.1)  # the producer's cache of the scope
    # Project 101 left the scope: sent inline now (here: no relay, so it fails inline —
    # which proves it was not queued).
    queued_before = redis_client.llen(keys.QUEUE)
    with pytest.raises(NotificationError):
        notifier.notify(notification)
    assert redis_client.llen(keys.QUEUE) == queued_before
    assert notifier.notify(Notification(102, 1, 1, notification.mails)) == QUEUED
    # The workers log at debug level now.
    redis_client.lpush(keys.QUEUE, encode("test.count", {"id": "dbg"}))
    pool.wait_for_log(r"\[info\] Got message: .*dbg")
    pool.wait_for_log(r"\[debug\] Wait for messages")
    notifier.close()
    assert pool.stop() == 0


def test_scaling_under_slow_jobs_loses_and_interrupts_nothing(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    port = redis_server.port
    config = tmp_path / "local.inc"
    config.write_text(config_text(port, 3, level="info"))
    pool = start(pools, tmp_path, config)
    wait_for_workers(redis_client, 3)
    stop = threading.Event()
    pushed: list[int] = []

    def produce() -> None:
        client = redis_server.client()
        number = 0
        while not stop.is_set():
            client.lpush(keys.QUEUE, encode("test.slow", {"id": number, "seconds": 0.3}))
            pushed.append(number)
            number += 1
            stop.wait(0.05)
        client.close()

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        for workers in (1, 4, 2, 3):
            time.sleep(1.0)
            config.write_text(config_text(port, workers, level="info"))
            wait_for_workers(redis_client, workers)
    finally:
        stop.set()
        producer.join()
    wait_until(
        lambda: redis_client.llen(keys.QUEUE) == 0 and not processing_lists(redis_client),
        timeout=60,
        what="the queue drained",
    )
    runs = Counter(value.decode() for value in redis_client.lrange(RUNS_KEY, 0, -1))
    assert {f"start:{n}" for n in pushed} | {f"end:{n}" for n in pushed} == set(runs)
    assert set(runs.values()) == {1}  # each job ran once, start to end: none cut off
    assert redis_client.llen(keys.DEAD_LETTERS) == 0
    assert "Stopping worker" in pool.log()
    assert pool.stop() == 0


def test_a_new_redis_address_moves_the_workers_one_by_one(
    tmp_path: Path, pools: list[Pool], redis_server_factory: RedisServerFactory
) -> None:
    old, new = redis_server_factory(), redis_server_factory()
    old_client, new_client = old.client(), new.client()
    config = tmp_path / "local.inc"
    config.write_text(config_text(old.port, 2, level="info"))
    pool = start(pools, tmp_path, config)
    wait_for_workers(old_client, 2)
    # Both workers are in the middle of a job on the old Redis; one more job waits there.
    old_client.lpush(
        keys.QUEUE, *[encode("test.slow", {"id": n, "seconds": 1.5}) for n in range(3)]
    )
    wait_until(lambda: old_client.llen(RUNS_KEY) >= 2, what="two jobs started")
    # And one waits in the lane of another pool, which that pool still serves.
    old_client.lpush(keys.lane_list("elsewhere"), encode("test.slow", {"id": 9, "seconds": 0}))
    old_client.zadd(keys.LANES, {"elsewhere": int(old_client.time()[0]) + 3600})
    config.write_text(config_text(new.port, 2, level="info"))
    pool.wait_for_log(rf"config: Redis 127.0.0.1:{old.port} → 127.0.0.1:{new.port}")
    wait_for_workers(new_client, 2)
    wait_until(lambda: not worker_heartbeats(old_client), timeout=20, what="old Redis left")
    log = pool.wait_for_log(rf"Left Redis 127.0.0.1:{old.port}: it still holds \d+ queued")
    said = re.search(rf"Left Redis 127.0.0.1:{old.port}: it still holds (\d+) queued", log)
    assert said is not None
    assert int(said.group(1)) == old_client.llen(keys.QUEUE) + 1  # the lane's one counted
    # The jobs running on the old Redis finished, none cut off; what was left there is
    # still there (not lost, not served), and said so.
    runs = [value.decode() for value in old_client.lrange(RUNS_KEY, 0, -1)]
    assert all(runs.count(f"end:{n}") == runs.count(f"start:{n}") for n in range(3))
    left = old_client.llen(keys.QUEUE) + old_client.zcard(keys.DELAYED)
    assert left + len({r for r in runs if r.startswith("end:")}) == 3
    assert processing_lists(old_client) == {}
    # The new Redis is served.
    new_client.lpush(keys.QUEUE, encode("test.count", {"id": "new"}))
    wait_until(
        lambda: new_client.lrange(RUNS_KEY, 0, -1) == [b"new"], what="a run on the new Redis"
    )
    assert new_client.exists(keys.pool(socket.gethostname()))
    assert not old_client.exists(keys.pool(socket.gethostname()))
    assert pool.stop() == 0


def test_new_mail_settings_replace_the_workers_one_by_one(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    port = redis_server.port
    config = tmp_path / "local.inc"
    config.write_text(config_text(port, 2, level="info"))
    pool = start(pools, tmp_path, config)
    before = wait_for_workers(redis_client, 2)
    redis_client.lpush(
        keys.QUEUE, *[encode("test.slow", {"id": n, "seconds": 0.5}) for n in range(2)]
    )
    wait_until(lambda: redis_client.llen(RUNS_KEY) >= 2, what="two jobs started")
    config.write_text(config_text(port, 2, level="info").replace("noreply@", "robot@"))
    pool.wait_for_log("config: mail settings changed: workers are replaced one by one")
    wait_until(
        lambda: len(worker_heartbeats(redis_client)) == 2 and not pids(redis_client) & before,
        timeout=20,
        what="two new workers",
    )
    runs = Counter(value.decode() for value in redis_client.lrange(RUNS_KEY, 0, -1))
    assert runs == Counter({"start:0": 1, "end:0": 1, "start:1": 1, "end:1": 1})
    assert pool.log().count("its settings are outdated") == 2
    assert pool.stop() == 0


def test_a_burst_of_saves_and_a_half_written_file_are_coalesced(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    port = redis_server.port
    config = tmp_path / "local.inc"
    config.write_text(config_text(port, 1, level="info"))
    pool = start(pools, tmp_path, config)
    wait_for_workers(redis_client, 1)
    for workers in (2, 3, 4, 5, 2, 4):
        config.write_text(config_text(port, workers, level="info"))
    # Then a save caught halfway (a truncated statement), completed right after.
    full = config_text(port, 3, level="info")
    with open(config, "w") as handle:
        handle.write(full[: full.index("$sys_nb_backend_workers") + 10])
        handle.flush()
        handle.write(full[full.index("$sys_nb_backend_workers") + 10 :])
    wait_for_workers(redis_client, 3)
    time.sleep(1)
    log = pool.log()
    assert "config error" not in log  # the half-written file was never applied
    changes = [line for line in log.splitlines() if "config: workers" in line]
    assert 1 <= len(changes) <= 3  # seven saves, coalesced
    assert changes[-1].endswith("→ 3")
    assert pool.stop() == 0


def test_a_slow_writer_and_a_replaced_directory_are_handled(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    port = redis_server.port
    conf = tmp_path / "conf"
    conf.mkdir()
    config = conf / "local.inc"
    config.write_text(config_text(port, 2, level="info"))
    pool = start(pools, tmp_path, config)
    wait_for_workers(redis_client, 2)
    # A generator that truncates the file, thinks for 0.4 s, then writes it.
    with open(config, "w") as handle:
        handle.flush()
        time.sleep(0.4)
        handle.write(config_text(port, 3, level="info"))
    pool.wait_for_log("config: workers 2 → 3")
    wait_for_workers(redis_client, 3)
    assert "Redis" not in "".join(
        line for line in pool.log().splitlines() if "config: " in line and "workers" not in line
    )
    # The whole directory replaced (mv conf conf.old; mv conf.new conf): no event names the
    # file, the periodic check sees it.
    fresh = tmp_path / "conf.new"
    fresh.mkdir()
    (fresh / "local.inc").write_text(config_text(port, 1, level="info"))
    conf.rename(tmp_path / "conf.old")
    fresh.rename(conf)
    pool.wait_for_log("config: workers 3 → 1", timeout=15)
    wait_for_workers(redis_client, 1)
    # And it keeps watching the new directory.
    config.write_text(config_text(port, 2, level="info"))
    pool.wait_for_log("config: workers 1 → 2", timeout=15)
    assert pool.stop() == 0


def test_a_second_redis_change_during_a_move_strands_nothing(
    tmp_path: Path, pools: list[Pool], redis_server_factory: RedisServerFactory
) -> None:
    first, typo, right = (redis_server_factory() for _ in range(3))
    first_client, right_client = first.client(), right.client()
    config = tmp_path / "local.inc"
    config.write_text(config_text(first.port, 2, level="info"))
    pool = start(pools, tmp_path, config)
    wait_for_workers(first_client, 2)
    first_client.lpush(
        keys.QUEUE, *[encode("test.slow", {"id": n, "seconds": 2}) for n in range(2)]
    )
    wait_until(lambda: first_client.llen(RUNS_KEY) >= 2, what="two jobs started")
    config.write_text(config_text(typo.port, 2, level="info"))
    pool.wait_for_log(rf"→ 127.0.0.1:{typo.port}: the pool moves now")
    config.write_text(config_text(right.port, 2, level="info"))
    pool.wait_for_log(rf"→ 127.0.0.1:{right.port}: the pool moves now")
    wait_for_workers(right_client, 2)
    wait_until(lambda: not worker_heartbeats(first_client), timeout=30, what="first Redis left")
    pool.wait_for_log(rf"Left Redis 127.0.0.1:{first.port}: it still holds", timeout=15)
    assert processing_lists(first_client) == {}
    runs = Counter(value.decode() for value in first_client.lrange(RUNS_KEY, 0, -1))
    assert runs["start:0"] == runs["end:0"] and runs["start:1"] == runs["end:1"]
    assert pool.stop() == 0


def test_ttin_and_ttou_change_the_count_for_the_session_until_the_next_save(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    import signal

    config = write_config(tmp_path, port=redis_server.port, workers=2)
    pool = Pool(tmp_path, config).start()
    pools.append(pool)

    def running() -> int:
        return sum(
            1 for beat in worker_heartbeats(redis_client).values() if beat["state"] != "stopping"
        )

    def published() -> tuple[int, int]:
        fields = redis_client.hgetall(keys.pool(socket.gethostname()))
        return int(fields.get(b"wanted", 0)), int(fields.get(b"configured", 0))

    wait_until(lambda: running() == 2, what="2 workers")
    pool.signal(signal.SIGTTIN)
    wait_until(lambda: running() == 3 and published() == (3, 2), what="3 workers, files say 2")
    pool.wait_for_log(r"workers 2 → 3 for this session")
    # One at a time: signals of one kind sent faster than the pool handles them count once.
    for count in (2, 1, 0):
        pool.signal(signal.SIGTTOU)
        pool.wait_for_log(rf"workers {count + 1} → {count} for this session")
    wait_until(lambda: published() == (0, 2) and running() == 0, what="no worker")
    pool.signal(signal.SIGTTOU)  # not below zero
    write_config(tmp_path, port=redis_server.port, workers=2)  # a save: the files win
    wait_until(lambda: running() == 2 and published() == (2, 2), what="back to the files' 2")
    pool.wait_for_log(r"the session's worker count \(0\) gives way to the files'")
    assert pool.stop() == 0
