"""End to end: lanes in the real ``tuitop --no-ui``: notifications do not wait behind long
Tuleap tasks, lanes follow a saved config live, a lane nobody serves is not forgotten."""

from __future__ import annotations

import itertools
import json
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import RedisServerFactory, SmtpServerFactory
from tests.pool import (
    Pool,
    nothing_pending,
    notification,
    push_all,
    wait_until,
    worker_heartbeats,
    write_config,
)
from tests.tuleap import TASK, Tuleap, php_message
from tuitop.backends.redis import keys
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.lanes import DEFAULT_LANE, LONG_LANE

JIRA = "tuleap.tracker.creation.jira"


@pytest.fixture
def tuleap(tmp_path: Path) -> Tuleap:
    return Tuleap(tmp_path)


def start(pools: list[Pool], tmp_path: Path, tuleap: Tuleap, config: Path, *args: str) -> Pool:
    pool = Pool(tmp_path, config, *TASK, "--task-dir", str(tuleap.root), *args, env=tuleap.env)
    pools.append(pool.start())
    return pool


def long_job(message_id: str, seconds: float) -> bytes:
    payload = json.dumps({"id": message_id, "standin": {"sleep": seconds}})
    return php_message(JIRA, payload, time.time())


def overlapping(tuleap: Tuleap, ids: list[str]) -> bool:
    """Whether two of these tasks ran at the same time."""
    spans = sorted(
        (float(tuleap.runs_of(i)[0]["at"]), float(tuleap.runs_of(i, "end")[0]["at"])) for i in ids
    )
    return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))


@pytest.mark.parametrize("lanes", [True, False], ids=["lanes", "tuleaps-single-list"])
def test_notifications_do_not_wait_behind_long_tasks(
    tmp_path: Path,
    pools: list[Pool],
    tuleap: Tuleap,
    redis_server: EmbeddedRedis,
    smtp_server_factory: SmtpServerFactory,
    lanes: bool,
) -> None:
    smtp = smtp_server_factory()
    client = redis_server.client()
    extra = "" if lanes else "$tuitop_lanes = '';"
    config = write_config(tmp_path, port=redis_server.port, smtp_port=smtp.port, extra=extra)
    start(pools, tmp_path, tuleap, config)
    wait_until(lambda: len(worker_heartbeats(client)) == 2, what="2 workers")
    ids = [f"jira{i}" for i in range(3)]
    push_all(client, [long_job(i, 3.0) for i in ids])
    time.sleep(0.5)  # the imports are running
    sent = []
    for i in range(20):
        sent.append(time.time())
        push_all(client, [notification(i)])
        time.sleep(0.1)
    received = smtp.wait_for(20, timeout=30)
    waits = sorted(
        message.received_at - sent[int(str(message.message["X-Tuleap-Artifact-Id"]))]
        for message in received
    )
    wait_until(lambda: len(tuleap.runs("end")) == 3, 30, "the 3 imports to end")
    wait_until(lambda: nothing_pending(client), what="an empty queue")
    if lanes:
        # One worker for the long lane: the imports ran one after the other, and every
        # notification went out at once through the other worker.
        assert not overlapping(tuleap, ids)
        assert waits[-1] < 1.0, waits
    else:
        # Tuleap's single list: both workers took an import, the notifications waited.
        assert overlapping(tuleap, ids)
        assert waits[-1] > 2.0, waits
    client.close()


def test_lanes_follow_a_saved_config_and_a_lane_left_behind_is_run(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, redis_server: EmbeddedRedis
) -> None:
    client = redis_server.client()
    config = write_config(tmp_path, port=redis_server.port, extra="$tuitop_lanes = '';")
    pool = start(pools, tmp_path, tuleap, config)
    wait_until(lambda: len(worker_heartbeats(client)) == 2, what="2 workers")
    assert {beat["lane"] for beat in worker_heartbeats(client).values()} == {DEFAULT_LANE}
    push_all(client, [long_job("running", 3.0)])
    wait_until(lambda: tuleap.runs_of("running"), what="a task to start")

    # A lane for the imports, saved while one runs: the workers are replaced one by one,
    # each after its job; the running task is not interrupted.
    write_config(tmp_path, port=redis_server.port, extra=f"$tuitop_lanes = 'imports(1): {JIRA}';")
    pool.wait_for_log(rf"config: lanes none → imports\(1\): {JIRA}")

    def lanes_now() -> list[str]:
        return sorted(beat["lane"] for beat in worker_heartbeats(client).values())

    wait_until(lambda: lanes_now() == ["imports", DEFAULT_LANE], 30, "a worker on the lane")
    wait_until(lambda: tuleap.runs_of("running", "end"), 10, "the running task to finish")
    assert client.zscore(keys.LANES, "imports") is not None
    # Imports go to the lane's list and its worker, one at a time.
    push_all(client, [long_job(f"i{n}", 2.0) for n in range(3)])
    wait_until(lambda: client.llen(keys.lane_list("imports")) >= 1, what="imports on their lane")

    # The lane removed while imports wait on it: nobody serves it, so they go back to
    # Tuleap's list and run there: nothing is forgotten in a lane nobody serves.
    write_config(tmp_path, port=redis_server.port, extra="$tuitop_lanes = '';")
    pool.wait_for_log("config: lanes imports")
    wait_until(lambda: len(tuleap.runs("end")) == 4, 60, "every import to end")
    assert sorted(r["id"] for r in tuleap.runs()) == ["i0", "i1", "i2", "running"]  # once each
    wait_until(lambda: nothing_pending(client), what="an empty queue")
    assert client.llen(keys.lane_list("imports")) == 0
    assert "No pool serves lane imports any more" in pool.log()
    client.close()
    assert pool.stop() == 0


def test_a_pool_too_small_for_its_lanes_serves_them_all(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, redis_server: EmbeddedRedis
) -> None:
    client = redis_server.client()
    config = write_config(tmp_path, port=redis_server.port, workers=1)
    start(pools, tmp_path, tuleap, config)
    # Another pool's worker moved an import to the long lane's list before it went away.
    client.lpush(keys.lane_list(LONG_LANE), long_job("parked", 0.1))
    push_all(client, [long_job("direct", 0.1)])
    wait_until(lambda: len(tuleap.runs("end")) == 2, 20, "both imports to run")
    [beat] = worker_heartbeats(client).values()
    assert beat["lane"] == DEFAULT_LANE
    assert beat["serves"] == f"{DEFAULT_LANE},{LONG_LANE}"
    client.close()


def index_job(message_id: str, seconds: float) -> bytes:
    """A job of the default lane (a search index update) that runs ``seconds``."""
    payload = json.dumps({"id": message_id, "standin": {"sleep": seconds}})
    return php_message("tuleap.fts.index-item", payload, time.time())


def test_an_idle_lane_worker_takes_the_default_lanes_work_at_once(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, redis_server: EmbeddedRedis
) -> None:
    client = redis_server.client()
    start(pools, tmp_path, tuleap, write_config(tmp_path, port=redis_server.port))
    wait_until(lambda: len(worker_heartbeats(client)) == 2, what="2 workers")
    push_all(client, [index_job("long", 6.0)])  # the default lane's worker is busy
    wait_until(lambda: tuleap.runs_of("long"), what="the long one to start")
    sent = {}
    for n in range(10):
        sent[f"q{n}"] = time.time()
        push_all(client, [index_job(f"q{n}", 0.0)])
        time.sleep(0.2)
    wait_until(lambda: len(tuleap.runs("end")) == 10, 20, "the quick ones to run")
    # The lane's worker, idle, blocks on Tuleap's list too: each starts as soon as it is
    # free, none waits for the default lane's worker (busy 6 s). (A bound on each wait
    # would measure the machine: under a loaded CI, a task's start is slower than the
    # 0.2 s between two pushes, and the quick ones queue behind each other.)
    waits = [float(tuleap.runs_of(i)[0]["at"]) - at for i, at in sent.items()]
    assert waits[0] < 1.0, waits
    wait_until(lambda: tuleap.runs_of("long", "end"), 20, "the long one to end")
    long_ended = float(tuleap.runs_of("long", "end")[0]["at"])
    assert all(float(tuleap.runs_of(i)[0]["at"]) < long_ended for i in sent), waits
    client.close()


def test_a_lane_removed_while_old_workers_route_to_it_loses_nothing(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, redis_server: EmbeddedRedis
) -> None:
    client = redis_server.client()
    pool = start(pools, tmp_path, tuleap, write_config(tmp_path, port=redis_server.port))
    wait_until(lambda: len(worker_heartbeats(client)) == 2, what="2 workers")
    push_all(client, [long_job("slow", 8.0)])  # the lane's worker is busy for a while
    wait_until(lambda: tuleap.runs_of("slow"), what="the slow import to start")
    write_config(tmp_path, port=redis_server.port, extra="$tuitop_lanes = '';")
    pool.wait_for_log("config: lanes latency_15m")
    # Meanwhile imports keep coming. The idle default worker, outdated, is replaced at
    # once: none of them is moved to the lane no pool serves any more, to wait there for
    # the lane to be moved back (~15 s); the busy one is replaced after its job.
    for n in range(20):
        push_all(client, [long_job(f"i{n}", 0.05)])
        time.sleep(0.2)
    wait_until(lambda: len(tuleap.runs("end")) == 21, 8, "every import to run, promptly")
    assert sorted(r["id"] for r in tuleap.runs()) == sorted(["slow", *(f"i{n}" for n in range(20))])
    wait_until(lambda: nothing_pending(client), what="an empty queue")
    assert client.llen(keys.lane_list(LONG_LANE)) == 0
    client.close()


def test_a_warm_stop_of_the_last_pool_of_a_lane_moves_it_back(
    tmp_path: Path, pools: list[Pool], tuleap: Tuleap, redis_server: EmbeddedRedis
) -> None:
    client = redis_server.client()
    pool = start(pools, tmp_path, tuleap, write_config(tmp_path, port=redis_server.port))
    wait_until(lambda: len(worker_heartbeats(client)) == 2, what="2 workers")
    push_all(client, [long_job(f"j{n}", 2.0) for n in range(3)])
    wait_until(lambda: tuleap.runs(), what="an import to start")
    wait_until(lambda: client.llen(keys.lane_list(LONG_LANE)) >= 1, what="imports on the lane")
    assert pool.stop() == 0
    # Nothing is left in a list that only a running tuitop reads: what did not run waits
    # in Tuleap's list, for a Tuleap worker or the next pool.
    assert client.llen(keys.lane_list(LONG_LANE)) == 0
    assert client.zscore(keys.LANES, LONG_LANE) is None
    ran = len(tuleap.runs("end"))
    assert ran + client.llen(keys.QUEUE) == 3, (ran, client.llen(keys.QUEUE))
    assert "No other pool serves lane latency_15m" in pool.log()
    client.close()


def test_two_pools_of_a_lane_stopping_together_move_it_back(
    tmp_path: Path, tuleap: Tuleap, pools: list[Pool], redis_server: EmbeddedRedis
) -> None:
    client = redis_server.client()
    config = write_config(tmp_path, port=redis_server.port)
    both = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()  # each pool's own log
        both.append(start(pools, tmp_path / name, tuleap, config, "--pool-name", name))
    wait_until(lambda: len(worker_heartbeats(client)) == 4, what="4 workers")
    push_all(client, [long_job(f"j{n}", 3.0) for n in range(8)])
    wait_until(lambda: client.llen(keys.lane_list(LONG_LANE)) >= 4, what="imports on the lane")
    for pool in both:
        pool.signal(signal.SIGTERM)
    for pool in both:
        assert pool.wait(30) == 0
    # Each said at once that it served no lane any more: neither counted on the other.
    assert client.llen(keys.lane_list(LONG_LANE)) == 0
    assert len(tuleap.runs("end")) + client.llen(keys.QUEUE) == 8
    client.close()


def test_a_lane_list_no_set_lists_is_found_at_start_and_run(
    tmp_path: Path, tuleap: Tuleap, pools: list[Pool], redis_server: EmbeddedRedis
) -> None:
    client = redis_server.client()
    # What an older tuitop left: messages in a lane's list, the lane nowhere listed.
    client.lpush(keys.lane_list("imports"), long_job("old1", 0.0), long_job("old2", 0.0))
    config = write_config(tmp_path, port=redis_server.port, extra="$tuitop_lanes = '';")
    pool = start(pools, tmp_path, tuleap, config)
    wait_until(lambda: len(tuleap.runs("end")) == 2, 20, "both to run")
    assert "Lane imports had messages no pool listed" in pool.log()
    client.close()


def test_a_redis_left_behind_gets_its_lanes_back_in_tuleaps_list(
    tmp_path: Path,
    tuleap: Tuleap,
    pools: list[Pool],
    redis_server_factory: RedisServerFactory,
) -> None:
    old, new = redis_server_factory(), redis_server_factory()
    old_client = old.client()
    # One worker: the long lane has none of its own, the default worker serves it too.
    config = write_config(tmp_path, port=old.port, workers=1)
    pool = start(pools, tmp_path, tuleap, config)
    wait_until(lambda: len(worker_heartbeats(old_client)) == 1, what="the worker")
    push_all(old_client, [index_job("busy", 2.0)])
    wait_until(lambda: tuleap.runs_of("busy"), what="its job to start")
    parked = long_job("parked", 0.0)
    old_client.lpush(keys.lane_list(LONG_LANE), parked)  # waits behind the running job
    write_config(tmp_path, port=new.port, workers=1)
    pool.wait_for_log(rf"Left Redis 127.0.0.1:{old.port}: it still holds 1 queued", timeout=30)
    # The old server's lane is back in its Tuleap list, where any worker finds it.
    assert old_client.llen(keys.lane_list(LONG_LANE)) == 0
    assert old_client.lrange(keys.QUEUE, 0, -1) == [parked]
    assert not tuleap.runs_of("parked")
    old_client.close()
