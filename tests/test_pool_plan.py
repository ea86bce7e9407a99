"""The pool's decisions (tuitop.pool.plan), tested as the pure functions they are."""

from __future__ import annotations

import signal

from tuitop.backends.retry import backoff
from tuitop.config import LogLevel, RedisSettings, Secret, Settings
from tuitop.lanes import DEFAULT_LANE, LaneSet, Staffing
from tuitop.pool.plan import (
    Seat,
    config_change,
    describe_exit,
    free_slots,
    plan_scale,
    same_server,
)

D = DEFAULT_LANE
NO_LANES = LaneSet()
TWO_LANES = LaneSet.parse("latency_5m(1): slow.*")


def seats(count: int, *, idle: bool = True) -> dict[int, Seat]:
    return {slot: Seat(D, (D,), idle) for slot in range(count)}


def test_backoff_doubles_from_one_second_up_to_its_cap() -> None:
    waits = [0.0]
    for _ in range(7):
        waits.append(backoff(waits[-1], 30.0))
    assert waits[1:] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_free_slots_fill_the_holes_first() -> None:
    assert free_slots({0, 2, 3}, 3) == [1, 4, 5]
    assert free_slots(set(), 0) == []


def test_missing_workers_start_and_nothing_starts_while_it_cannot() -> None:
    staffing = Staffing(NO_LANES, 3)
    plan = plan_scale(staffing, seats(1), {}, replacing=False, can_start=True)
    assert (plan.stop, plan.start) == ([], [D, D])
    plan = plan_scale(staffing, seats(1), {}, replacing=False, can_start=False)
    assert (plan.stop, plan.start) == ([], [])


def test_scaling_down_stops_the_outdated_first_then_the_highest_slots() -> None:
    staffing = Staffing(NO_LANES, 2)
    plan = plan_scale(staffing, seats(4), {1: "old"}, replacing=False, can_start=True)
    assert plan.stop == [(1, "the pool is scaled down"), (3, "the pool is scaled down")]
    assert plan.start == [] and plan.outdated == {}


def test_idle_outdated_workers_are_replaced_at_once_busy_ones_one_at_a_time() -> None:
    staffing = Staffing(NO_LANES, 3)
    busy = seats(3, idle=False)
    outdated = {0: "its settings are outdated", 1: "its settings are outdated"}
    plan = plan_scale(staffing, busy, outdated, replacing=False, can_start=True)
    assert plan.stop == [(0, "its settings are outdated")]
    assert plan.outdated == {1: "its settings are outdated"}
    assert plan.start == [D]  # its replacement, at once
    # While one replacement is under way, the next busy one waits.
    later = plan_scale(staffing, busy, plan.outdated, replacing=True, can_start=True)
    assert later.stop == [] and later.outdated == plan.outdated
    # Idle ones go at once, however many.
    idle = plan_scale(staffing, seats(3), outdated, replacing=True, can_start=True)
    assert [slot for slot, _ in idle.stop] == [0, 1]


def test_no_replacement_while_none_can_start() -> None:
    """Capacity would drop for nothing: the Redis in force does not answer yet."""
    plan = plan_scale(Staffing(NO_LANES, 2), seats(2), {0: "x"}, replacing=False, can_start=False)
    assert plan.stop == [] and plan.outdated == {0: "x"}


def test_a_lanes_worker_beyond_its_share_is_replaced_by_one_for_the_lane_missing() -> None:
    staffing = Staffing(TWO_LANES, 2)  # one worker of latency_5m, one of the default lane
    plan = plan_scale(staffing, seats(2), {}, replacing=False, can_start=True)
    assert plan.stop == [(1, "its lane changed")]
    assert plan.start == ["latency_5m"]
    assert staffing.serves("latency_5m") == ("latency_5m", D)


def test_config_change_says_each_change_and_what_it_means_for_the_workers() -> None:
    here = RedisSettings(host="r1", port=6379, password=Secret("p1"))
    base = Settings(redis=here, backend_workers=2)
    same = config_change(base, base)
    assert not same.changed and same.said == [] and not same.replace_workers

    more = config_change(base, Settings(redis=here, backend_workers=4))
    assert more.said == ["workers 2 → 4"] and more.changed and not more.replace_workers

    level = config_change(base, Settings(redis=here, backend_workers=2, log_level=LogLevel.DEBUG))
    assert not level.replace_workers and not level.leave_store

    password = RedisSettings(host="r1", port=6379, password=Secret("p2"))
    creds = config_change(base, Settings(redis=password, backend_workers=2))
    assert creds.leave_store and creds.replace_workers
    assert "new credentials" in creds.said[0] and "p2" not in creds.said[0]

    elsewhere = RedisSettings(host="r2", port=6380)
    moved = config_change(base, Settings(redis=elsewhere, backend_workers=2))
    assert moved.leave_store and "r1:6379 → r2:6380" in moved.said[0]

    first = config_change(Settings(), base)
    assert not first.leave_store and first.said[0] == "Redis at r1:6379"

    lanes = config_change(base, Settings(redis=here, backend_workers=2, lanes=TWO_LANES))
    assert lanes.replace_workers and lanes.said[0].startswith("lanes ")


def test_same_server_ignores_the_credentials() -> None:
    a = RedisSettings(host="r", port=1, password=Secret("x"))
    assert same_server(a, RedisSettings(host="r", port=1, password=Secret("y")))
    assert not same_server(a, RedisSettings(host="r", port=1, tls=True))


def test_describe_exit() -> None:
    assert describe_exit(0, False) == "exited with code 0"
    assert describe_exit(-signal.SIGKILL, False) == "was killed by SIGKILL"
    assert describe_exit(-40, False) == "was killed by signal 40"
    assert describe_exit(None, True).startswith("ended (its exit code was lost")
