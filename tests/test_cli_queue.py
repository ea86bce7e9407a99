"""`tuitop enqueue`, `notify`, `dead-letters` and `adopt-tuleap`, run as the real command."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from tests.conftest import RedisServerFactory
from tests.pool import run_tuitop, write_config
from tuitop.backends.redis import keys
from tuitop.backends.redis.queue import dead_letter_entry
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.embedded.smtpserver import SmtpServer
from tuitop.message import decode


def test_enqueue_pushes_a_tuleap_message(
    tmp_path: Path, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    config = write_config(tmp_path, port=redis_server.port)
    result = run_tuitop("enqueue", "--config", str(config), "tuleap.x", '{"a": [1, "b/c"]}')
    assert result.returncode == 0, result.stderr
    message = decode(redis_client.lindex(keys.QUEUE, 0))
    assert (message.topic, message.payload, message.queued_total) == (
        "tuleap.x",
        {"a": [1, "b/c"]},
        0,
    )
    assert message.enqueue_ts > 0


def test_enqueue_refuses_a_payload_that_is_not_json(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    config = write_config(tmp_path, port=redis_server.port)
    result = run_tuitop("enqueue", "--config", str(config), "t", "{nope")
    assert result.returncode == 2
    assert "not JSON" in result.stderr


def test_enqueue_without_redis_configured(tmp_path: Path) -> None:
    config = tmp_path / "local.inc"
    config.write_text("<?php\n$sys_nb_backend_workers = 1;\n")
    result = run_tuitop("enqueue", "--config", str(config), "t", "{}")
    assert result.returncode == 2
    assert "Redis is not configured" in result.stderr


def test_enqueue_with_a_wrong_password_never_prints_it(
    tmp_path: Path, redis_server_factory: RedisServerFactory
) -> None:
    server = redis_server_factory(password="the-right-one-and-long-enough-0123456789")
    wrong = "the-wrong-one-that-must-not-leak-9876543210"
    config = write_config(tmp_path, port=server.port, password=wrong)
    result = run_tuitop("enqueue", "--config", str(config), "t", "{}")
    assert result.returncode == 1
    assert "refused the password" in result.stderr
    assert wrong not in result.stderr + result.stdout


def test_notify_queues_or_sends_by_the_scope(
    tmp_path: Path, redis_server: EmbeddedRedis, redis_client: redis.Redis, smtp_server: SmtpServer
) -> None:
    config = write_config(
        tmp_path,
        port=redis_server.port,
        smtp_port=smtp_server.port,
        extra="$sys_async_emails = '101';",
    )
    common = [
        "--artifact",
        "42",
        "--changeset",
        "7",
        "--to",
        "a@example.com",
        "--subject",
        "S",
        "--text",
        "T",
    ]
    queued = run_tuitop("notify", "--config", str(config), "--project", "101", *common)
    assert queued.returncode == 0, queued.stderr
    assert "notification queued" in queued.stdout
    assert decode(redis_client.lindex(keys.QUEUE, 0)).payload["project_id"] == 101
    sent = run_tuitop("notify", "--config", str(config), "--project", "5", *common)
    assert sent.returncode == 0, sent.stderr
    assert "notification sent" in sent.stdout
    assert smtp_server.wait_for(1)[0].subject == "S"


def test_dead_letters_list_show_replay_purge(
    tmp_path: Path, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    config = str(write_config(tmp_path, port=redis_server.port))
    raw = b'{"event_name":"t.x","payload":{},"_enqueue_ts":1.5,"_queued_total":3}'
    for reason in ("first reason", "second reason"):
        redis_client.lpush(
            keys.DEAD_LETTERS,
            dead_letter_entry(
                raw, reason, worker="h/0#1", tries=3, topic="t.x", traceback="Trace!"
            ),
        )
    listed = run_tuitop("dead-letters", "--config", config)
    assert listed.returncode == 0
    assert "second reason" in listed.stdout.splitlines()[0]
    assert "2 dead letter(s) shown" in listed.stdout
    shown = run_tuitop("dead-letters", "--config", config, "show", "1")
    assert "first reason" in shown.stdout and "Trace!" in shown.stdout
    assert run_tuitop("dead-letters", "--config", config, "show", "9").returncode == 1
    replayed = run_tuitop("dead-letters", "--config", config, "replay", "0")
    assert "replayed 1 dead letter" in replayed.stdout
    assert json.loads(redis_client.lindex(keys.QUEUE, 0))["_queued_total"] == 0
    assert redis_client.llen(keys.DEAD_LETTERS) == 1
    purged = run_tuitop("dead-letters", "--config", config, "purge")
    assert "purged 1 dead letter(s)" in purged.stdout
    assert redis_client.llen(keys.DEAD_LETTERS) == 0


def test_dead_letters_are_shown_with_the_passwords_masked_as_the_log_masks_them(
    tmp_path: Path, redis_server_factory: RedisServerFactory
) -> None:
    """A message, its reason or its traceback may hold a password in force (a handler
    that put it in an exception, a producer that put it in a payload): the log masks it,
    and so does `dead-letters` (issue 22)."""
    password = "s3cret-redis-password-of-thirty-chars"
    server = redis_server_factory(password=password)
    config = str(write_config(tmp_path, port=server.port, password=password))
    raw = json.dumps({"event_name": "t.x", "payload": {"token": password}}).encode()
    client = server.client()
    client.lpush(
        keys.DEAD_LETTERS,
        dead_letter_entry(
            raw, f"auth failed with {password}", worker="h/0#1", tries=3, topic="t.x",
            traceback=f"Traceback: {password}",
        ),
    )  # fmt: skip
    client.close()
    listed = run_tuitop("dead-letters", "--config", config)
    shown = run_tuitop("dead-letters", "--config", config, "show", "0")
    assert listed.returncode == shown.returncode == 0, shown.stderr
    assert "auth failed with ***" in listed.stdout
    assert '"token": "***"' in shown.stdout and "Traceback: ***" in shown.stdout
    assert password not in listed.stdout + shown.stdout + shown.stderr


def test_adopt_tuleap_requeues_what_tuleaps_stopped_workers_held(
    tmp_path: Path, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    from tuitop.message import encode

    config = write_config(tmp_path, port=redis_server.port)
    fresh = encode("tuleap.tracker.artifact", {"artifact_id": 1})
    worn = encode("tuleap.tracker.artifact", {"artifact_id": 2}, queued_total=3)
    redis_client.lpush(keys.processing_list("1"), fresh, worn)  # Tuleap's worker --id=1
    ours = keys.processing_list("web-1/0#123")
    redis_client.lpush(ours, b"a live tuitop worker's")
    dry = run_tuitop("adopt-tuleap", "--config", str(config), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "app_user_events-processing-1 (Tuleap's worker 1): 2 message(s)" in dry.stdout
    assert redis_client.llen(keys.processing_list("1")) == 2

    result = run_tuitop("adopt-tuleap", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "1 message(s) re-queued with one more try, 1 past their last try" in result.stdout
    assert redis_client.llen(keys.processing_list("1")) == 0
    [(member, _due)] = redis_client.zrange(keys.DELAYED, 0, -1, withscores=True)
    assert decode(member.partition(b"|")[2]).queued_total == 1
    assert redis_client.llen(keys.DEAD_LETTERS) == 1
    assert redis_client.lrange(ours, 0, -1) == [b"a live tuitop worker's"]  # not Tuleap's
    again = run_tuitop("adopt-tuleap", "--config", str(config))
    assert "no processing list of Tuleap's workers holds a message" in again.stdout


def test_a_tuleap_worker_is_running_when_its_pid_file_names_a_live_process(
    tmp_path: Path,
) -> None:
    import os

    from tuitop.backends.redis.tuleapworkers import running_pid

    (tmp_path / "worker.pid").write_text(f"{os.getpid()}\n")
    (tmp_path / "worker_2.pid").write_text("999999999\n")
    (tmp_path / "worker_3.pid").write_text("garbage")
    assert running_pid(0, str(tmp_path)) == os.getpid()
    assert running_pid(2, str(tmp_path)) is None
    assert running_pid(3, str(tmp_path)) is None
    assert running_pid(4, str(tmp_path)) is None


def test_hand_back_is_refused_while_a_pool_runs_and_done_once_none_does(
    tmp_path: Path, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    from tuitop.message import encode

    config = write_config(tmp_path, port=redis_server.port)
    redis_client.lpush(keys.lane_list("latency_15m"), encode("tuleap.tracker.creation.jira", {}))
    redis_client.zadd(keys.LANES, {"latency_15m": 1})
    redis_client.sadd(keys.POOLS, "web-1")
    redis_client.hset(keys.pool("web-1"), "host", "web-1")  # its heartbeat: it runs
    refused = run_tuitop("hand-back", "--config", str(config))
    assert refused.returncode == 1
    assert "pool web-1 still run(s) on this Redis" in refused.stderr
    assert redis_client.llen(keys.QUEUE) == 0
    redis_client.delete(keys.pool("web-1"))  # its heartbeat expired: it is gone
    # A worker of it still beats (its pool was killed; it finishes its job): refused.
    redis_client.sadd(keys.WORKERS, "web-1/0#42")
    redis_client.hset(keys.heartbeat("web-1/0#42"), "state", "busy")
    redis_client.set(keys.worker_alive("web-1/0#42"), 1, ex=10)
    refused = run_tuitop("hand-back", "--config", str(config))
    assert refused.returncode == 1 and "worker web-1/0#42" in refused.stderr
    # Its alive key expired (its hash lingers: it says nothing of life).
    redis_client.delete(keys.worker_alive("web-1/0#42"))
    result = run_tuitop("hand-back", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "1 from lanes (latency_15m 1)" in result.stdout
    assert redis_client.llen(keys.QUEUE) == 1


def test_dead_letters_written_by_anyone_are_listed_and_shown(
    tmp_path: Path, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    redis_client.lpush(keys.DEAD_LETTERS, b'{"message":"x","at":1e300}', b'{"message_hex":"zz"}')
    config = str(write_config(tmp_path, port=redis_server.port))
    listed = run_tuitop("dead-letters", "--config", config)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert "2 dead letter(s) shown" in listed.stdout
    shown = run_tuitop("dead-letters", "show", "0", "--config", config)
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr


def test_processing_lists_named_with_other_digits_are_not_tuleaps(
    redis_client: redis.Redis,
) -> None:
    """Not Tuleap's: "²".isdigit() is true, and int() reads an Arabic-Indic one as 1."""
    from tuitop.backends.redis import tuleapworkers

    redis_client.lpush(keys.processing_list("\u00b2"), b"x")
    redis_client.lpush(keys.processing_list("\u0661"), b"y")
    redis_client.lpush(keys.processing_list("7"), b"z")
    assert [found.number for found in tuleapworkers.tuleap_lists(redis_client)] == [7]
