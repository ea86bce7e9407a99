"""``tuitop check``, run as the real command against a real Redis and real pools: each of
the monitoring plugin's four exit codes, its status line and perfdata, and no password in
anything it prints."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import RedisServerFactory
from tests.pool import REPO, Pool, run_tuitop, wait_until, write_config
from tests.tuleap import Tuleap, start_db_pool
from tests.tuleapdb import database_inc, enqueue, fresh_database
from tuitop.backends.redis import keys
from tuitop.embedded.mariadbserver import DatabaseServer
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.message import encode

STRONG = "correct-horse-battery-staple-0123456789"
"""A password of at least 30 characters, as the seed asks."""
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
HANDLERS = ("--handlers", "tests.handlers_for_tests")


@pytest.fixture
def sound_redis(redis_server_factory: RedisServerFactory) -> EmbeddedRedis:
    """A Redis as the seed wants it: a long password, appendonly on."""
    return redis_server_factory(password=STRONG, appendonly=True)


def check(config: Path, *args: str) -> tuple[int, str, list[str]]:
    """Runs ``tuitop check``: (exit code, status line, the finding lines)."""
    done = run_tuitop("--config", str(config), "check", *args)
    assert done.stderr == ""
    first, *details = done.stdout.splitlines()
    return done.returncode, first, details


def check_json(config: Path, *args: str) -> dict[str, object]:
    done = run_tuitop("--config", str(config), "check", "--json", *args)
    document: dict[str, object] = json.loads(done.stdout)
    assert document["code"] == done.returncode
    return document


def perfdata(status_line: str) -> dict[str, str]:
    _, _, data = status_line.partition(" | ")
    return dict(item.split("=", 1) for item in data.split())


def start(pools: list[Pool], tmp_path: Path, config: Path, *args: str) -> Pool:
    pool = Pool(tmp_path, config, *args).start()
    pools.append(pool)
    return pool


def running(client: redis.Redis, count: int) -> None:
    """Waits until a pool's heartbeat says ``count`` workers run."""

    def ready() -> bool:
        return any(
            client.hget(keys.pool(name.decode()), "running") == str(count).encode()
            for name in client.smembers(keys.POOLS)
        )

    wait_until(ready, what=f"a pool's heartbeat saying {count} worker(s) run")


def test_ok_with_a_sound_redis_and_a_running_pool(
    tmp_path: Path, pools: list[Pool], sound_redis: EmbeddedRedis
) -> None:
    config = write_config(tmp_path, port=sound_redis.port, password=STRONG, workers=2)
    start(pools, tmp_path, config)
    client = sound_redis.client()
    running(client, 2)
    code, line, details = check(config)
    assert code == OK, (line, details)
    assert line.startswith("TUITOP OK - ")
    data = perfdata(line)
    assert data["workers"] == "2;;;0"
    assert data["pools"] == "1;;;0"
    assert data["oldest"].startswith("0s;120;900;0")
    assert any("keeps an append-only file" in d for d in details)
    assert any("refuses clients without the password" in d for d in details)
    assert STRONG not in line + "".join(details)


def test_a_stale_message_is_tuleaps_warning_then_critical(
    tmp_path: Path, pools: list[Pool], sound_redis: EmbeddedRedis
) -> None:
    config = write_config(tmp_path, port=sound_redis.port, password=STRONG, workers=1)
    start(pools, tmp_path, config, *HANDLERS)
    client = sound_redis.client()
    running(client, 1)
    # The only worker is busy; behind it waits a message enqueued 200 s ago.
    client.lpush(keys.QUEUE, encode("test.sleep", {"id": "busy", "seconds": 60}))
    wait_until(lambda: client.llen(keys.QUEUE) == 0, what="the worker to take its job")
    client.lpush(keys.QUEUE, encode("test.count", {"id": "late"}, enqueue_ts=time.time() - 200))
    code, line, _ = check(config)
    assert code == WARNING, line
    assert (
        "There are 1 async events waiting to be processed, you should check if Tuleap "
        "Workers are running." in line
    )
    assert "waits since 3 min" in line
    assert float(perfdata(line)["oldest"].split("s;")[0]) >= 200
    code, line, _ = check(config, "--warning", "60", "--critical", "150")
    assert code == CRITICAL, line
    document = check_json(config, "--warning", "300", "--critical", "600")
    assert document["status"] == "OK", document["findings"]


def test_messages_waiting_with_a_stopped_pool_are_critical(
    tmp_path: Path, pools: list[Pool], sound_redis: EmbeddedRedis
) -> None:
    config = write_config(tmp_path, port=sound_redis.port, password=STRONG, workers=1)
    pool = start(pools, tmp_path, config)
    client = sound_redis.client()
    running(client, 1)
    assert pool.stop() == 0
    code, line, _ = check(config)
    assert code == WARNING and "no tuitop pool runs" in line, line
    client.lpush(keys.QUEUE, encode("test.count", {"id": "x"}))
    code, line, _ = check(config)
    assert code == CRITICAL, line
    assert "1 message(s) wait and no tuitop pool runs" in line


def test_a_pool_of_no_worker_with_messages_waiting_is_critical(
    tmp_path: Path, pools: list[Pool], sound_redis: EmbeddedRedis
) -> None:
    config = write_config(tmp_path, port=sound_redis.port, password=STRONG, workers=0)
    start(pools, tmp_path, config)
    client = sound_redis.client()
    wait_until(lambda: client.smembers(keys.POOLS), what="the pool's heartbeat")
    client.lpush(keys.QUEUE, encode("test.count", {"id": "x"}))
    code, line, _ = check(config)
    assert code == CRITICAL, line
    assert "no worker runs" in line and "wants 0" in line


def test_a_refused_config_save_is_a_warning_until_fixed(
    tmp_path: Path, pools: list[Pool], sound_redis: EmbeddedRedis
) -> None:
    config = write_config(tmp_path, port=sound_redis.port, password=STRONG, workers=1)
    pool = start(pools, tmp_path, config)
    client = sound_redis.client()
    running(client, 1)
    good = config.read_text()
    broken = tmp_path / "pool-view.inc"  # the pool's file breaks; check reads a good copy
    broken.write_text(good)
    config.write_text(good + "$sys_nb_backend_workers = ;\n")
    pool.wait_for_log("config error")
    code, line, _ = check(broken)
    assert code == WARNING, line
    assert "keeps its last good config, a save was refused" in line
    assert re.search(r"local\.inc:\d+:\d+: expected", line), line
    config.write_text(good)
    pool.wait_for_log("the error is fixed")
    wait_until(lambda: check(broken)[0] == OK, what="the warning to clear")


def test_dead_letters_made_lately_are_a_warning(
    tmp_path: Path, pools: list[Pool], sound_redis: EmbeddedRedis
) -> None:
    config = write_config(tmp_path, port=sound_redis.port, password=STRONG, workers=1)
    start(pools, tmp_path, config)
    client = sound_redis.client()
    running(client, 1)
    client.lpush(keys.QUEUE, b"this is not JSON")
    wait_until(lambda: client.llen(keys.DEAD_LETTERS) == 1, what="a dead letter")
    code, line, _ = check(config)
    assert code == WARNING, line
    assert "1 message(s) dead-lettered in the last 15 min (1 kept)" in line
    assert perfdata(line)["dead_letters"] == "1;;;0"


def test_a_redis_without_password_nor_appendonly_is_warned(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    start(pools, tmp_path, config)
    running(redis_server.client(), 1)
    document = check_json(config)
    assert document["status"] == "WARNING"
    texts = [f["text"] for f in document["findings"]]  # type: ignore[attr-defined]
    assert any("no password" in t and "30 characters" in t for t in texts)
    assert any("without appendonly" in t for t in texts)


def test_a_short_password_and_an_open_door_are_warned(
    tmp_path: Path, redis_server_factory: RedisServerFactory
) -> None:
    short = "short-secret-9"
    server = redis_server_factory(password=short, appendonly=True)
    config = write_config(tmp_path, port=server.port, password=short)
    done = run_tuitop("--config", str(config), "check", "--json")
    document = json.loads(done.stdout)
    texts = [f["text"] for f in document["findings"]]
    assert any("shorter than the 30 characters" in t for t in texts)
    assert short not in done.stdout + done.stderr
    # A long password in the config, but the server asks for none.
    open_server = redis_server_factory(appendonly=True)
    config = write_config(tmp_path, port=open_server.port, password=STRONG, name="open.inc")
    done = run_tuitop("--config", str(config), "check")
    assert "Redis answers clients that send no password" in done.stdout
    assert STRONG not in done.stdout + done.stderr


def test_redis_settings_refused_are_unknown_for_that_part(
    tmp_path: Path, pools: list[Pool], sound_redis: EmbeddedRedis
) -> None:
    client = sound_redis.client()
    # The hardening guides' advice: no INFO, no CONFIG for the application's user.
    client.execute_command("ACL", "SETUSER", "default", "-info", "-config")
    config = write_config(tmp_path, port=sound_redis.port, password=STRONG, workers=1)
    start(pools, tmp_path, config)
    running(client, 1)
    code, line, details = check(config)
    assert code == UNKNOWN, (line, details)
    assert "INFO and CONFIG GET refused" in line
    assert "--no-redis-settings" in line
    code, line, _ = check(config, "--no-redis-settings")
    assert code == OK, line


def test_a_wrong_password_is_critical_and_never_printed(
    tmp_path: Path, sound_redis: EmbeddedRedis
) -> None:
    wrong = "not-the-password-but-just-as-long-1234"
    config = write_config(tmp_path, port=sound_redis.port, password=wrong)
    done = run_tuitop("--config", str(config), "check")
    assert done.returncode == CRITICAL, done.stdout
    assert "password" in done.stdout.lower()
    assert wrong not in done.stdout + done.stderr
    assert STRONG not in done.stdout + done.stderr


def test_an_unreachable_redis_is_critical(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp_path, port=port)
    done = run_tuitop("--config", str(config), "check")
    assert done.returncode == CRITICAL, done.stdout
    assert done.stdout.startswith("TUITOP CRITICAL - ")


def test_a_server_that_never_answers_is_unknown_within_the_timeout(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        config = write_config(tmp_path, port=silent.getsockname()[1])
        done = subprocess.run(
            [sys.executable, "-m", "tuitop", "--config", str(config), "check", "-t", "0.5"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=30,
        )
    assert done.returncode == UNKNOWN, done.stdout
    assert "no answer within 0.5 s" in done.stdout


def test_usage_and_config_errors_are_unknown(tmp_path: Path) -> None:
    done = run_tuitop("check", "--no-such-option")
    assert done.returncode == UNKNOWN
    done = run_tuitop("check", "--warning", "x")
    assert done.returncode == UNKNOWN
    broken = tmp_path / "local.inc"
    broken.write_text("<?php\n$redis_server = 'x'\n$redis_port = 1;\n")
    done = run_tuitop("--config", str(broken), "check")
    assert done.returncode == UNKNOWN
    assert done.stdout.startswith("TUITOP UNKNOWN - config error:")
    assert "local.inc:3:1: expected ';'" in done.stdout
    done = run_tuitop("--config", str(broken), "check", "--warning", "900")
    assert done.returncode == UNKNOWN and "--critical" in done.stdout


def test_the_database_queue_is_checked_the_same(
    tmp_path: Path, pools: list[Pool], database_server: DatabaseServer
) -> None:
    database = fresh_database(database_server)
    tuleap = Tuleap(tmp_path)
    config = database_inc(tmp_path, database, workers=1)
    pool = start_db_pool(pools, tmp_path, tuleap, config)
    # (Until its worker registers, the check sees no live worker.)
    wait_until(lambda: check(config)[0] == OK, what="an OK")
    code, line, details = check(config)
    assert not any("Redis" in d for d in details)  # no Redis to look at
    assert pool.stop() == 0
    enqueue(database, "tracker.artifact_change", {"id": 1}, now=time.time() - 200)
    code, line, details = check(config)
    assert code == CRITICAL, line
    assert "1 message(s) wait and no tuitop pool runs" in line
    assert any(d.startswith("WARNING: There are 1 async events waiting") for d in details)
    assert float(perfdata(line)["oldest"].split("s;")[0]) >= 200


def test_a_worker_recycled_after_max_messages_is_no_false_alarm(
    tmp_path: Path, pools: list[Pool], sound_redis: EmbeddedRedis
) -> None:
    # A worker that reaches --max-messages exits and is replaced: the pool's heartbeat
    # must never say it runs fewer than it wants meanwhile (check: WARNING, "runs 1 of
    # the 2 worker(s) it wants"), or every busy forge's check flaps.
    config = write_config(tmp_path, port=sound_redis.port, password=STRONG, workers=2)
    start(pools, tmp_path, config, *HANDLERS, "--max-messages", "2")
    client = sound_redis.client()
    running(client, 2)
    for index in range(12):
        client.lpush(keys.QUEUE, encode("test.count", {"id": f"n{index}"}))
    seen: set[bytes] = set()
    deadline = time.monotonic() + 30
    while client.llen("test:runs") < 12 and time.monotonic() < deadline:
        for name in client.smembers(keys.POOLS):
            seen.add(client.hget(keys.pool(name.decode()), "running") or b"")
        time.sleep(0.005)
    assert client.llen("test:runs") == 12
    assert seen == {b"2"}, seen


@pytest.mark.parametrize("stamp", ['"nan"', '"inf"', '"1e999"'])
def test_a_message_with_an_odd_time_is_no_alarm_and_no_crash(
    tmp_path: Path, pools: list[Pool], sound_redis: EmbeddedRedis, stamp: str
) -> None:
    # A producer's junk (anyone may push): a time that is no time. The check neither
    # dies (--json refuses NaN) nor makes up an age.
    config = write_config(tmp_path, port=sound_redis.port, password=STRONG, workers=0)
    start(pools, tmp_path, config)
    client = sound_redis.client()
    wait_until(lambda: client.smembers(keys.POOLS), what="the pool's heartbeat")
    client.lpush(keys.QUEUE, f'{{"event_name":"x","payload":{{}},"_enqueue_ts":{stamp}}}')
    done = run_tuitop("--config", str(config), "check", "--json")
    assert done.stderr == "", done.stderr
    document = json.loads(done.stdout)
    assert document["perfdata"]["oldest"]["value"] == 0
    assert not any("async events" in f["text"] for f in document["findings"])
    _, line, _ = check(config)
    assert "oldest=0s;" in line, line


@pytest.mark.parametrize(
    "line",
    [
        "$redis_password = {secret};",  # the quotes forgotten
        "$redis_password = 7{secret};",
        "$redis_password = '{secret}' {secret};",
    ],
)
def test_a_refused_save_never_shows_the_new_password(
    tmp_path: Path, pools: list[Pool], sound_redis: EmbeddedRedis, line: str
) -> None:
    # The admin changes the password and forgets its quotes: the pool refuses the save
    # and says where — never what the word is, in its log, its heartbeat, or the check.
    secret = "NewPassw0rdForTheForgeXYZ0123456789"
    config = write_config(tmp_path, port=sound_redis.port, password=STRONG, workers=1)
    pool = start(pools, tmp_path, config)
    client = sound_redis.client()
    running(client, 1)
    good = config.read_text()
    view = tmp_path / "view.inc"
    view.write_text(good)
    config.write_text(good + line.format(secret=secret) + "\n")
    pool.wait_for_log("config error")
    code, status, details = check(view)
    assert code == WARNING, status
    assert "a save was refused" in status
    beats = [str(client.hgetall(keys.pool(n.decode()))) for n in client.smembers(keys.POOLS)]
    for text in (status, *details, pool.log(), *beats):
        assert secret not in text, text


def test_a_threshold_that_is_no_number_is_a_usage_error(
    tmp_path: Path, sound_redis: EmbeddedRedis
) -> None:
    # "-c inf" (never critical?) passed the range test and then broke both outputs:
    # perfdata 'inf' no plugin parser reads, and --json died on a float JSON refuses.
    config = write_config(tmp_path, port=sound_redis.port, password=STRONG)
    for args in (("-c", "inf"), ("-w", "nan"), ("-c", "inf", "--json")):
        done = run_tuitop("--config", str(config), "check", *args)
        assert done.returncode == UNKNOWN, (args, done.stdout, done.stderr)
        assert done.stderr == "", done.stderr
        assert "--warning must be above 0 and below --critical" in done.stdout


def test_what_waits_behind_a_pause_is_a_warning_until_it_is_late(
    tmp_path: Path, pools: list[Pool], sound_redis: EmbeddedRedis
) -> None:
    # 'tuitop ctl pause' is an operator's decision: what waits behind it is said as a
    # WARNING (paused), not paged as CRITICAL "no worker takes from it" at the first
    # message; its age still turns CRITICAL past -c.
    config = write_config(
        tmp_path,
        port=sound_redis.port,
        password=STRONG,
        workers=2,
        extra="$tuitop_lanes = 'bulk(1): test.sleep';",
    )
    start(pools, tmp_path, config, *HANDLERS, "--pool-name", "alpha")
    client = sound_redis.client()
    running(client, 2)
    done = run_tuitop("--config", str(config), "ctl", "pause", "bulk")
    assert done.returncode == 0, done.stdout
    wait_until(
        lambda: (
            all(
                b"bulk" not in (client.hget(keys.heartbeat(w.decode()), "serves") or b"")
                for w in client.smembers(keys.WORKERS)
            )
            and client.hget(keys.pool("alpha"), "running") == b"2"
        ),
        what="no worker serving bulk",
    )
    client.lpush(keys.QUEUE, encode("test.sleep", {"id": "b", "seconds": 0}))
    wait_until(lambda: client.llen(keys.lane_list("bulk")) == 1, what="bulk waiting")
    code, line, details = check(config)
    assert code == WARNING, (line, details)
    assert "lane bulk: 1 message(s) wait, paused" in line
    done = run_tuitop("--config", str(config), "ctl", "pause")
    assert done.returncode == 0, done.stdout
    running(client, 0)
    client.lpush(keys.QUEUE, encode("test.count", {"id": "n"}))
    code, line, details = check(config)
    assert code == WARNING, (line, details)
    assert "no worker runs (alpha wants 2, paused)" in line
    late = encode("test.count", {"id": "late"}, enqueue_ts=time.time() - 1000)
    client.rpush(keys.QUEUE, late)  # the next one taken
    code, line, _ = check(config)
    assert code == CRITICAL, line
