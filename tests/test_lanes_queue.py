"""Lanes in Redis: the take script's routing, blocking takes, give-backs, unserved lanes,
the pools' tick. Against a real Redis server."""

from __future__ import annotations

import time

import redis

from tuitop.backends.redis import keys
from tuitop.backends.redis.queue import Queue, TakePlan, Waited
from tuitop.backends.redis.stats import POOL_TICK_SCRIPT, pool_tick
from tuitop.lanes import DEFAULT_LANE, LaneSet
from tuitop.message import decode, encode

D = DEFAULT_LANE
LANES = LaneSet.parse("long(1): tuleap.tracker.creation.jira, tuleap.mediawiki-standalone.*")
LONG = keys.lane_list("long")


def queue_for(client: redis.Redis, *serves: str) -> Queue:
    return Queue(client, plan=TakePlan.for_lanes(LANES, serves))


def topics(raws: list[bytes]) -> list[str]:
    return [decode(raw).topic for raw in raws]


def payload_ids(raws: list[bytes]) -> list[int]:
    return [decode(raw).payload["i"] for raw in raws]


def test_a_default_worker_moves_other_lanes_messages_to_their_list_in_order(
    redis_client: redis.Redis,
) -> None:
    mixed = [
        encode(topic, {"i": i})
        for i, topic in enumerate(
            [
                "tuleap.tracker.artifact",
                "tuleap.tracker.creation.jira",
                "tuleap.git.hooks.post-receive",
                "tuleap.mediawiki-standalone.instance-creation",
                "tuleap.tracker.creation.jira",
                "tuleap.tracker.artifact",
            ]
        )
    ]
    redis_client.lpush(keys.QUEUE, *mixed)  # as front ends push: LPUSH, one by one
    queue = queue_for(redis_client, D)
    taken = queue.take_or_count("w/0#1", 32)
    assert taken.source == keys.QUEUE
    assert payload_ids(taken.messages) == [0, 2, 5]
    assert redis_client.llen(keys.QUEUE) == 0
    # The lane's list is FIFO as the queue is: the oldest is taken first (from the right).
    assert payload_ids(list(reversed(redis_client.lrange(LONG, 0, -1)))) == [1, 3, 4]
    # The lane is listed, so that it is moved back if no pool ever comes to serve it.
    assert redis_client.zrange(keys.LANES, 0, -1) == [b"long"]
    # Nothing is anywhere twice: the processing list holds exactly what was kept.
    assert payload_ids(
        list(reversed(redis_client.lrange(keys.processing_list("w/0#1"), 0, -1)))
    ) == [0, 2, 5]


def test_a_lane_worker_takes_its_lane_first_then_helps_the_default_lane(
    redis_client: redis.Redis,
) -> None:
    redis_client.lpush(LONG, encode("tuleap.tracker.creation.jira", {"i": 1}))
    redis_client.lpush(
        keys.QUEUE,
        encode("tuleap.tracker.artifact", {"i": 2}),
        encode("tuleap.tracker.creation.jira", {"i": 3}),
    )
    queue = queue_for(redis_client, "long", D)
    first = queue.take_or_count("w/1#1", 32)
    assert (first.source, payload_ids(first.messages)) == (LONG, [1])
    # Its lane is empty: it takes from Tuleap's list what it serves, both lanes' messages.
    second = queue.take_or_count("w/1#1", 32)
    assert (second.source, payload_ids(second.messages)) == (keys.QUEUE, [2, 3])
    nothing = queue.take_or_count("w/1#1", 32)
    assert nothing.messages == [] and nothing.held == 3


def test_a_message_is_routed_by_its_topic_wherever_it_is_written(
    redis_client: redis.Redis,
) -> None:
    odd = b'{"payload":{"i":1},"event_name":"tuleap.tracker.creation.jira"}'
    big = b'{"payload":"' + b"x" * 70_000 + b'","event_name":"tuleap.tracker.creation.jira"}'
    redis_client.lpush(keys.QUEUE, odd, b"not json at all", b"[1, 2]", big)
    taken = queue_for(redis_client, D).take_or_count("w/0#1", 32)
    # The odd one goes to its lane; what has no topic to read is run where it was taken
    # (and dead-lettered there with the reason), never lost; a big one is not decoded in
    # Redis, where it would hold every other client up: it runs on the default lane.
    assert taken.messages == [b"not json at all", b"[1, 2]", big]
    assert redis_client.lrange(LONG, 0, -1) == [odd]


def test_a_blocking_take_moves_another_lanes_message_and_takes_again(
    redis_client: redis.Redis,
) -> None:
    queue = queue_for(redis_client, D)
    long_one = encode("tuleap.tracker.creation.jira", {"i": 1})
    redis_client.lpush(keys.QUEUE, long_one)
    assert queue.take_blocking("w/0#1", 0.5) == Waited(None, routed=True)
    assert redis_client.lrange(LONG, 0, -1) == [long_one]
    assert redis_client.zrange(keys.LANES, 0, -1) == [b"long"]
    assert redis_client.llen(keys.processing_list("w/0#1")) == 0
    short = encode("tuleap.tracker.artifact", {"i": 2})
    redis_client.lpush(keys.QUEUE, short)
    assert queue.take_blocking("w/0#1", 0.5) == Waited(short)
    # A lane worker blocks on Tuleap's list too, where every message arrives first: idle,
    # it takes a notification at once; its own lane's list it takes from between waits.
    lane_queue = queue_for(redis_client, "long", D)
    redis_client.lpush(keys.QUEUE, short)
    assert lane_queue.take_blocking("w/1#1", 0.5) == Waited(short)
    redis_client.lpush(keys.QUEUE, long_one)
    assert lane_queue.take_blocking("w/1#1", 0.5) == Waited(long_one)  # its lane: kept
    assert lane_queue.take_blocking("w/1#1", 0.1) == Waited(None)
    assert payload_ids(lane_queue.take("w/1#1", 5)) == [1]  # the one moved there before


def test_give_back_returns_messages_to_the_head_of_their_own_list(
    redis_client: redis.Redis,
) -> None:
    raws = [encode("tuleap.tracker.creation.jira", {"i": i}) for i in range(3)]
    redis_client.lpush(LONG, *raws)
    queue = queue_for(redis_client, "long", D)
    taken = queue.take_or_count("w/1#1", 3)
    assert taken.source == LONG and len(taken.messages) == 3
    queue.give_back("w/1#1", taken.messages[1:], to=taken.source)
    assert payload_ids(list(reversed(redis_client.lrange(LONG, 0, -1)))) == [1, 2]
    assert redis_client.llen(keys.QUEUE) == 0


def test_a_lane_routed_to_and_never_served_is_moved_back_too(redis_client: redis.Redis) -> None:
    # A pool killed before it ever said it serves the lane its workers routed to.
    redis_client.lpush(keys.QUEUE, encode("tuleap.tracker.creation.jira", {"i": 1}))
    assert queue_for(redis_client, D).take("w/0#1", 32) == []
    score = redis_client.zscore(keys.LANES, "long")
    assert score is not None
    redis_client.zadd(keys.LANES, {"long": score - 60})  # a minute later, by Redis' clock
    assert Queue(redis_client).recover_unserved_lanes(10) == {"long": 1}
    assert payload_ids(Queue(redis_client).take("w/0#1", 10)) == [1]


def test_a_lane_no_pool_serves_goes_back_to_tuleaps_list(redis_client: redis.Redis) -> None:
    raws = [encode("tuleap.tracker.creation.jira", {"i": i}) for i in range(5)]
    redis_client.lpush(LONG, *raws)
    redis_client.lpush(keys.lane_list("served"), b"kept")
    now = int(redis_client.time()[0])
    redis_client.zadd(keys.LANES, {"long": now - 60, "served": now, "empty": now - 60})
    queue = Queue(redis_client)
    assert queue.recover_unserved_lanes(10) == {"long": 5}
    # The oldest is taken first, as it would have been from its lane.
    assert payload_ids(queue.take("w/0#1", 10)) == [0, 1, 2, 3, 4]
    assert redis_client.zrange(keys.LANES, 0, -1) == [b"served"]
    assert redis_client.lrange(keys.lane_list("served"), 0, -1) == [b"kept"]
    # Bounded per call: a long lane moves over several calls.
    redis_client.lpush(LONG, *raws)
    redis_client.zadd(keys.LANES, {"long": now - 60})
    assert queue.recover_unserved_lanes(10, limit=2) == {"long": 2}
    assert queue.recover_unserved_lanes(10, limit=2) == {"long": 2}
    assert queue.recover_unserved_lanes(10, limit=2) == {"long": 1}
    assert redis_client.zscore(keys.LANES, "long") is None


def test_the_pool_tick_says_which_lanes_it_serves_and_samples_every_list(
    redis_client: redis.Redis,
) -> None:
    redis_client.lpush(keys.QUEUE, b"a", b"b")
    redis_client.lpush(LONG, b"c")
    script = redis_client.register_script(POOL_TICK_SCRIPT)
    now = time.time()
    tick = pool_tick({D, "long"}, now, sample=True)
    assert tick is not None
    script_keys, args = tick
    script(keys=script_keys, args=args)
    assert redis_client.zrange(keys.LANES, 0, -1) == [b"long"]  # the default lane is Tuleap's
    assert abs(redis_client.zscore(keys.LANES, "long") - int(redis_client.time()[0])) <= 1
    assert redis_client.hget(script_keys[1], "depth") == b"3"
    # Between two samples (one a stats bucket is all a view reads) it only says the lanes.
    redis_client.hdel(script_keys[1], "depth")
    tick = pool_tick({D, "long"}, now, sample=False)
    assert tick is not None
    script(keys=tick[0], args=tick[1])
    assert redis_client.hget(script_keys[1], "depth") is None
    assert pool_tick({D}, now, sample=False) is None  # nothing to say: no command


def test_both_ways_of_taking_read_a_topic_alike(redis_client: redis.Redis) -> None:
    # Bigger than the decode limit and its topic not first: not decoded, by the script
    # (Redis would be held up) nor by a blocking take — it runs on the default lane.
    big = b'{"payload":"' + b"x" * 70_000 + b'","event_name":"tuleap.tracker.creation.jira"}'
    small = b'{"payload":{"i":1},"event_name":"tuleap.tracker.creation.jira"}'
    queue = queue_for(redis_client, D)
    redis_client.lpush(keys.QUEUE, big)
    assert queue.take_blocking("w/0#1", 0.5) == Waited(big)
    redis_client.lpush(keys.QUEUE, small)  # decoded, routed to its lane:
    assert queue.take_blocking("w/0#1", 0.5) == Waited(None, routed=True)
    assert redis_client.lrange(LONG, 0, -1) == [small]


def test_lane_lists_no_set_lists_are_found_and_listed(redis_client: redis.Redis) -> None:
    # As an older tuitop left them: a lane's list, not in tuitop:lanes.
    redis_client.lpush(LONG, encode("tuleap.tracker.creation.jira", {"i": 1}))
    queue = Queue(redis_client)
    assert queue.list_lanes() == ["long"]
    assert redis_client.zscore(keys.LANES, "long") == 0  # as not served since long
    assert queue.list_lanes() == []  # listed once
    assert queue.recover_unserved_lanes(10) == {"long": 1}


def test_hand_back_gives_tuleaps_list_everything_only_tuitop_reads(
    redis_client: redis.Redis,
) -> None:
    queue = queue_for(redis_client, D)
    redis_client.lpush(LONG, encode("tuleap.tracker.creation.jira", {"i": 1}))
    redis_client.zadd(keys.LANES, {"long": 1})
    redis_client.lpush(keys.QUEUE, encode("tuleap.fts.index-item", {"i": 2}))
    queue.take("pool/0#9", 1)  # held by a tuitop worker that is gone
    retry = encode("tuleap.git.hooks.post-receive", {"i": 3}, queued_total=1)
    redis_client.zadd(keys.DELAYED, {b"token|" + retry: time.time() + 3600})
    redis_client.lpush(keys.processing_list("2"), b"Tuleap's own: not for hand-back")
    handed = queue.hand_back("handed back")
    assert (handed.recovered, handed.lanes, handed.retries) == (1, {"long": 1}, 2)
    left = [decode(raw) for raw in redis_client.lrange(keys.QUEUE, 0, -1)]
    assert sorted(message.payload["i"] for message in left) == [1, 2, 3]
    assert redis_client.zcard(keys.DELAYED) == 0 and redis_client.llen(LONG) == 0
    assert redis_client.llen(keys.processing_list("pool/0#9")) == 0
    assert redis_client.llen(keys.processing_list("2")) == 1


def test_python_and_lua_route_odd_topics_alike(redis_client: redis.Redis) -> None:
    lanes = LaneSet.parse("x(1): a*b, ?")
    plan = TakePlan.for_lanes(lanes, (D,))
    queue = Queue(redis_client, plan=plan)
    for topic in ("a\nb", "é", "e", "ab", "a-b"):
        raw = encode(topic, {"t": topic})
        expected_kept = lanes.lane_of(topic) == D
        redis_client.lpush(keys.QUEUE, raw)
        kept = queue.take("w/0#1", 1) == [raw]  # the script
        redis_client.lpush(keys.QUEUE, raw)
        blocking_kept = queue.take_blocking("w/0#1", 0.2) == Waited(raw)  # Python
        assert kept == blocking_kept == expected_kept, topic
