"""``tuitop top --once [--json]``: one snapshot of a real pool for scripts, and a plain
error (never a password) when the store does not answer."""

from __future__ import annotations

import json
import time
from pathlib import Path

import redis

from tests.conftest import RedisServerFactory
from tests.pool import Pool, run_tuitop, wait_until, worker_heartbeats, write_config
from tests.tuleap import TASK, Tuleap, php_message
from tuitop.backends.redis import keys
from tuitop.config import DatabaseSettings
from tuitop.embedded.redisserver import EmbeddedRedis, free_port
from tuitop.message import encode
from tuitop.stats import MAX_TOPIC_LENGTH, STATS_BUCKET_SECONDS


def test_once_json_is_one_snapshot_of_a_live_pool(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    config = write_config(tmp_path, port=redis_server.port, workers=2)
    pool = Pool(tmp_path, config, "--pool-name", "alpha", "--handlers", "tests.handlers_for_tests")
    pools.append(pool.start())
    redis_client.lpush(keys.QUEUE, *[encode("test.count", {"id": n}) for n in range(5)])
    wait_until(lambda: redis_client.llen(keys.QUEUE) == 0, what="the queue drained")

    def document() -> dict:  # type: ignore[type-arg]
        done = run_tuitop("--config", str(config), "top", "--once", "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    found = wait_until(
        lambda: (d := document())["topics"].get("test.count", {}).get("n") == 5 and d,
        what="the five jobs counted",
    )
    assert found["schema"] == 1
    assert found["store"] == f"redis 127.0.0.1:{redis_server.port}"
    assert set(found["queue"]) >= {"waiting", "processing", "delayed", "dead_letters"}
    assert found["queue"]["waiting"] == 0
    (alpha,) = found["pools"]
    assert (alpha["name"], alpha["wanted"], alpha["paused"]) == ("alpha", 2, False)
    assert len(found["workers"]) == 2
    assert {worker["pool"] for worker in found["workers"]} == {"alpha"}
    assert all(worker["pid"] > 0 and worker["state"] for worker in found["workers"])
    assert found["lanes"][0]["name"] == "latency_10s"
    assert found["latency"]["1m"]["lanes"]["latency_10s"]["done"] >= 5
    assert set(found["latency"]["5m"]["end_to_end"]) == {"count", "p50", "p95", "p99", "max"}
    counted = found["topics"]["test.count"]
    assert counted["failed"] == 0 and counted["run"]["count"] == 5
    assert set(found["rates"]) == {"enqueued", "done", "failed"}

    # Without --json: a few lines for a person.
    done = run_tuitop("--config", str(config), "top", "--once")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"tuitop · redis 127.0.0.1:{redis_server.port}")
    assert "queue: waiting 0" in done.stdout
    assert "pool alpha@" in done.stdout and "workers 2/2" in done.stdout
    assert "workers: 2 (2 idle)" in done.stdout


def test_once_says_plainly_when_the_store_does_not_answer(
    tmp_path: Path, redis_server_factory: RedisServerFactory
) -> None:
    nobody = write_config(tmp_path, port=free_port(), name="nobody.inc")
    for extra in ((), ("--json",)):
        done = run_tuitop("--config", str(nobody), "top", "--once", *extra)
        assert done.returncode == 1
        assert done.stdout == ""
        assert done.stderr.startswith("tuitop: ") and "Traceback" not in done.stderr
    server = redis_server_factory(password="the-right-one-and-long-enough-0123456789")
    wrong = "the-wrong-one-that-must-not-leak-9876543210"
    config = write_config(tmp_path, port=server.port, password=wrong, name="wrong.inc")
    done = run_tuitop("--config", str(config), "top", "--once", "--json")
    assert done.returncode == 1
    assert "refused the password" in done.stderr
    assert wrong not in done.stderr + done.stdout
    # --json alone is a mistake, said.
    done = run_tuitop("--config", str(config), "top", "--json")
    assert done.returncode == 2 and "--once" in done.stderr


def test_once_json_reads_tuleaps_database_queue(tmp_path: Path, database: DatabaseSettings) -> None:
    from tests.tuleapdb import database_inc, enqueue

    config = database_inc(tmp_path, database)
    for n in range(3):
        enqueue(database, "tuleap.tracker.artifact", {"n": n})
    done = run_tuitop("--config", str(config), "top", "--once", "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["store"] == f"db {database.address}"
    assert found["queue"]["waiting"] == 3 and found["pools"] == []
    assert database.password.reveal() not in done.stdout + done.stderr


def test_once_leaves_out_stats_fields_it_never_writes(
    tmp_path: Path, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    # Anything that can write to the store can write to its stats buckets: a count that
    # is no number, a latency bucket that is no index or past any float, a topic's bucket
    # in digits int() refuses. Each is left out; what tuitop wrote is still read.
    bucket = keys.stats_bucket(int(time.time()) - int(time.time()) % STATS_BUCKET_SECONDS)
    redis_client.hset(
        bucket,
        mapping={
            "done": "abc",
            "failed": "-5",
            "w:x": "1",
            "e:99999999": "1",
            "t#n|hostile": "many",
            "t#w:99999|hostile": "1",
            "t#w:²|hostile": "1",
            "e:100": "3",
            "t#n|test.count": "3",
            "t#w:100|test.count": "3",
        },
    )
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    done = run_tuitop("--config", str(config), "top", "--once", "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["latency"]["1m"]["end_to_end"]["count"] == 3
    assert found["topics"]["test.count"]["wait"]["count"] == 3
    assert found["topics"].get("hostile", {}).get("wait", {}).get("count", 0) == 0
    assert found["rates"]["done"] == 0 and found["rates"]["failed"] == 0
    done = run_tuitop("--config", str(config), "top", "--once")
    assert done.returncode == 0, done.stderr


def test_a_huge_topic_is_cut_in_the_heartbeat(
    tmp_path: Path, pools: list[Pool], redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    # A producer's topic of a megabyte, run by Tuleap's task process for a while: the
    # worker's heartbeat repeats its topic every second, and every view reads it.
    tuleap = Tuleap(tmp_path)
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    pool = Pool(tmp_path, config, *TASK, "--task-dir", str(tuleap.root), env=tuleap.env)
    pools.append(pool.start())
    huge = "hostile." + "x" * 1_000_000
    payload = json.dumps({"id": "h", "standin": {"sleep": 30}})
    redis_client.lpush(keys.QUEUE, php_message(huge, payload, time.time()))
    busy = wait_until(
        lambda: [b for b in worker_heartbeats(redis_client).values() if b["state"] == "busy"],
        30,
        "the worker busy",
    )[0]
    assert busy["topic"] == huge[:MAX_TOPIC_LENGTH]
    done = run_tuitop("--config", str(config), "top", "--once", "--json")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout) < 100_000


def test_once_json_with_a_retry_due_never(
    tmp_path: Path, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    # Redis takes a score of +inf: the next retry is then in no time JSON can say.
    redis_client.zadd(keys.DELAYED, {encode("test.count", {"id": 1}): float("inf")})
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    done = run_tuitop("--config", str(config), "top", "--once", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["queue"]["delayed"] == 1
