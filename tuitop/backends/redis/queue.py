"""The reliable queue: push, take, ack, retry, dead-letter, recover.

Every operation keeps one promise: at every moment a message is in exactly one of the queue
(``keys.QUEUE``), one worker's processing list, the delayed set (waiting for its retry time),
the dead-letter list — or it is done. Moves between them are atomic (a Lua script or
MULTI/EXEC), so a crash at any point leaves each message in one of those places.

Tuleap's rules: a message that comes back (its worker died, its handler failed) carries
``_queued_total + 1`` and waits ``base · 2^min(n-1, 3)`` seconds (5, 10, 20 s); past 3 such
returns Tuleap discards it — tuitop moves it to the dead-letter list with the reason.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from redis import Redis, WatchError
from redis.client import Pipeline

from tuitop.backends.base import (
    DeadLetter,
    HandBack,
    Recovery,
    RetryPolicy,
    TimedOut,
    recovery_fates,
)
from tuitop.backends.redis import keys
from tuitop.backends.redis.stats import flush_into
from tuitop.backends.retry import not_written_back
from tuitop.lanes import DEFAULT_LANE, LaneSet
from tuitop.message import decode, with_queued_total
from tuitop.outcome import Outcome
from tuitop.stats import StatsBatch

ROUTING_DECODE_LIMIT = 65536
"""A message bigger than this is not decoded to find its topic for a lane (in Redis, that
would hold every other client up): without its topic first, it stays on the default lane."""

# Takes up to ARGV[1] messages into the processing list (KEYS[1]) in one round trip, from
# the first of the worker's source lists (KEYS[4] .. KEYS[3 + ARGV[2]], in its order) that
# holds any, but no more than a fair share of that list (its depth divided by the registered
# workers, KEYS[2]), so that a worker never sits on messages another idle worker could run.
# Taking from Tuleap's list (source number ARGV[3]), a message of a lane the worker does
# not serve is moved to that lane's list instead, in the same script: the lane is the first
# whose pattern (ARGV[5], ARGV[7] ...) matches the topic, the list is KEYS[target] (ARGV[6],
# ARGV[8] ...; 0: a lane the worker serves, the message is kept). The topic is read where
# PHP's json_encode writes it, first, else by decoding the message (up to
# ROUTING_DECODE_LIMIT bytes: a bigger one is kept); a message with no topic found is
# kept. A lane moved to is added to the lanes' set (KEYS[3]) if it is not there, so that
# it is found, and moved back, if no pool ever serves it (its name: the key after ARGV[4]
# characters).
# Returns {source number, message, ...} (oldest first); when nothing is kept, instead, how
# many messages the processing list already holds: a worker that holds none in memory then
# knows they were stranded there.
_TAKE_SCRIPT = """
local max_batch, sources, inbox = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local workers = nil
for s = 1, sources do
  local source = KEYS[3 + s]
  local depth = redis.call('LLEN', source)
  if depth > 0 then
    workers = workers or math.max(redis.call('SCARD', KEYS[2]), 1)
    local n = math.min(max_batch, math.floor(depth / workers))
    if n < 1 then n = 1 end
    local kept = redis.call('RPOP', source, n)
    if s == inbox and #ARGV > 4 then
      local taken = kept
      local listed, targets = {}, {}
      kept = {}
      for _, message in ipairs(taken) do
        local target = 0
        local topic = string.match(message, '^%s*{%s*"event_name"%s*:%s*"([^"\\]*)"')
        if not topic and #message <= @DECODE_LIMIT@ then
          local ok, document = pcall(cjson.decode, message)
          if ok and type(document) == 'table' and type(document.event_name) == 'string' then
            topic = document.event_name
          end
        end
        if topic then
          target = targets[topic]
          if target == nil then
            target = 0
            for i = 5, #ARGV, 2 do
              if string.match(topic, ARGV[i]) then
                target = tonumber(ARGV[i + 1])
                break
              end
            end
            targets[topic] = target
          end
        end
        if target == 0 then
          kept[#kept + 1] = message
        else
          redis.call('LPUSH', KEYS[target], message)
          if not listed[target] then
            listed[target] = true
            local now = redis.call('TIME')[1]
            redis.call('ZADD', KEYS[3], 'NX', now, string.sub(KEYS[target], ARGV[4] + 1))
          end
        end
      end
    end
    if #kept > 0 then
      redis.call('LPUSH', KEYS[1], unpack(kept))
      table.insert(kept, 1, s)
      return kept
    end
  end
end
return redis.call('LLEN', KEYS[1])
""".replace("@DECODE_LIMIT@", str(ROUTING_DECODE_LIMIT))

# Moves a message a worker took (blocking, from Tuleap's list) to the list of its lane
# (ARGV[2]), which the worker does not serve; only if it is still in the processing list.
# The lane is added to the lanes' set if it is not there, as _TAKE_SCRIPT does.
_ROUTE_SCRIPT = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], 'NX', redis.call('TIME')[1], ARGV[2])
  return 1
end
return 0
"""

# Moves back to Tuleap's list (KEYS[1]) the messages of the lanes no pool said it serves
# in the last ARGV[1] seconds (by Redis' clock: hosts' clocks may differ) — or, when ARGV
# names lanes after the third, of those — at most ARGV[2] messages a call, the oldest to be
# taken first; a lane whose list is empty is forgotten. Returns {lane, moved, lane, moved
# ...} for the lanes it moved messages of.
_RECOVER_LANES_SCRIPT = """
local stale = {}
if #ARGV > 3 then
  for i = 4, #ARGV do stale[#stale + 1] = ARGV[i] end
else
  local now = tonumber(redis.call('TIME')[1])
  stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[1]))
end
local budget = tonumber(ARGV[2])
local report = {}
for _, lane in ipairs(stale) do
  local list = ARGV[3] .. lane
  local moved = 0
  while budget > 0 and redis.call('LMOVE', list, KEYS[1], 'LEFT', 'RIGHT') do
    moved = moved + 1
    budget = budget - 1
  end
  if moved > 0 then
    report[#report + 1] = lane
    report[#report + 1] = moved
  end
  if redis.call('LLEN', list) == 0 then
    redis.call('ZREM', KEYS[2], lane)
  end
end
return report
"""

# Moves due messages from the delayed set to the head of the queue (taken next), oldest
# due first. Members are "<unique token>|<message>" so two equal messages stay two. Due by
# Redis' clock (ARGV[1] = 'now'), the clock that scheduled them: hosts' clocks may differ.
_MOVE_DUE_SCRIPT = """
local now = ARGV[1]
if now == 'now' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for i = #due, 1, -1 do
  local member = due[i]
  local sep = string.find(member, '|', 1, true)
  redis.call('RPUSH', KEYS[2], string.sub(member, sep + 1))
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""


# Adds a message (ARGV[2]) to the delayed set (KEYS[1]), due ARGV[1] seconds from now by
# Redis' clock. EVAL, not a registered script: it runs inside MULTI.
_SCHEDULE_SCRIPT = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(ARGV[1]), ARGV[2])
"""


# Removes finished messages from a processing list: one command for a whole batch (redis-py
# spends more time packing and parsing one LREM each than Redis spends running them). The
# oldest taken sit at the list's tail: when the finished ones are exactly the tail (the
# usual case), one LTRIM removes them; else each is searched from the tail. The reply says,
# per message, '1' when removed and '0' when it was no longer there (recovered meanwhile).
_ACK_SCRIPT = """
local n = #ARGV
local tail = redis.call('LRANGE', KEYS[1], -n, -1)
local exact = #tail == n
for i = 1, n do
  if not exact then break end
  exact = tail[n - i + 1] == ARGV[i]
end
if exact then
  redis.call('LTRIM', KEYS[1], 0, -n - 1)
  return string.rep('1', n)
end
local removed = {}
for i = 1, n do
  removed[i] = tostring(redis.call('LREM', KEYS[1], -1, ARGV[i]))
end
return table.concat(removed)
"""

# Returns taken messages to the head of the list they came from (ARGV: last to take first),
# each only if it is still in the processing list: a supervisor may have recovered it
# meanwhile.
_GIVE_BACK_SCRIPT = """
for i = 1, #ARGV do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[i])
  end
end
return 0
"""


_TOPIC_FIRST = re.compile(rb'^\s*\{\s*"event_name"\s*:\s*"([^"\\]*)"')


def routing_topic(raw: bytes) -> str | None:
    """The topic a message is routed to a lane by, found as _TAKE_SCRIPT finds it: where
    PHP's json_encode writes it, first, else by decoding up to ROUTING_DECODE_LIMIT."""
    first = _TOPIC_FIRST.match(raw)
    if first is not None:
        return first.group(1).decode("utf-8", "replace")
    if len(raw) > ROUTING_DECODE_LIMIT:
        return None
    message = decode(raw)
    return None if message.problem is not None else message.topic


# Takes one dead letter (ARGV[1]) out of the list — searched from the newest end, or from
# the oldest (ARGV[3] = -1) — and pushes its message (ARGV[2]) onto the queue, atomically;
# 0 when it was no longer there.
_REPLAY_SCRIPT = """
if redis.call('LREM', KEYS[1], tonumber(ARGV[3]), ARGV[1]) == 0 then
  return 0
end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
"""


def _alive(said_alive: object, roster: object, worker_id: str) -> bool:
    """Whether a worker is alive, from its alive key's EXISTS and its pool's ``workers``
    field (HGET: None when the pool is gone)."""
    if said_alive:
        return True
    if not isinstance(roster, bytes):
        return False
    return worker_id.encode() in roster.split(b",")


def alive_in(client: Redis, worker_ids: Sequence[str]) -> list[bool]:
    """Whether each worker is alive, in one round trip: it said so itself within its
    heartbeat's life (``keys.worker_alive``), or a live pool lists it in its hash (an
    idle worker writes nothing)."""
    if not worker_ids:
        return []
    pools = sorted({keys.pool_of(worker_id) for worker_id in worker_ids})
    pipe = client.pipeline(transaction=False)
    for worker_id in worker_ids:
        pipe.exists(keys.worker_alive(worker_id))
    for name in pools:
        pipe.hget(keys.pool(name), "workers")
    replies = pipe.execute()
    rosters = dict(zip(pools, replies[len(worker_ids) :], strict=True))
    return [
        _alive(said, rosters[keys.pool_of(worker_id)], worker_id)
        for worker_id, said in zip(worker_ids, replies, strict=False)
    ]


@dataclass(frozen=True)
class TakePlan:
    """Where a worker takes messages from, in order, and which it moves to another lane.

    The plain plan is Tuleap's: one list. With lanes (:mod:`tuitop.lanes`) a worker takes
    from the lists of the lanes it serves, its own first, and moves what it takes from
    Tuleap's list for a lane it does not serve to that lane's list."""

    sources: tuple[str, ...] = (keys.QUEUE,)
    """The lists taken from, in order (its own lane's first). Every worker serves the
    default lane and blocks on its list, Tuleap's, where every message arrives first: an
    idle worker of any lane takes a notification at once."""
    lanes: LaneSet = field(default_factory=LaneSet)
    serves: tuple[str, ...] = (DEFAULT_LANE,)

    @classmethod
    def for_lanes(cls, lanes: LaneSet, serves: tuple[str, ...]) -> TakePlan:
        return cls(tuple(keys.lane_list(lane) for lane in serves), lanes, serves)

    def route(self, topic: str) -> str | None:
        """The lane to move a message of ``topic`` to, or None to keep it."""
        lane = self.lanes.lane_of(topic)
        return None if lane in self.serves else lane

    def script_keys_and_args(self) -> tuple[list[str], list[str | int]]:
        """The take script's KEYS after the processing list, and its ARGV after the batch
        size (see _TAKE_SCRIPT)."""
        script_keys = [keys.WORKERS, keys.LANES, *self.sources]
        inbox = self.sources.index(keys.QUEUE) + 1 if keys.QUEUE in self.sources else 0
        args: list[str | int] = [len(self.sources), inbox, len(keys.LANE_PREFIX)]
        if inbox:
            targets: dict[str, int] = {}
            for pattern, lane in self.lanes.routes():
                if lane in self.serves:
                    args += [pattern, 0]
                    continue
                key = keys.lane_list(lane)
                if key not in targets:
                    script_keys.append(key)
                    targets[key] = len(script_keys) + 1  # KEYS[1] is the processing list
                args += [pattern, targets[key]]
            if all(target == 0 for target in args[4::2]):
                args = args[:3]  # nothing to route: the script skips reading topics
        return script_keys, args


@dataclass(frozen=True)
class Waited:
    """What a blocking take did: the message taken (None: none), or whether it moved one
    to its lane's list instead (the caller takes again)."""

    raw: bytes | None
    routed: bool = False


@dataclass(frozen=True)
class Taken:
    """What a take moved into the processing list, oldest first, and from which list."""

    messages: list[bytes]
    source: str
    held: int
    """When nothing was taken: how many messages the processing list holds already."""


def dead_letter_entry(
    raw: bytes,
    reason: str,
    *,
    worker: str,
    tries: int,
    topic: str,
    traceback: str = "",
    now: float | None = None,
) -> bytes:
    """The stored form of a dead letter (JSON; the message kept exactly when it is UTF-8)."""
    record: dict[str, Any] = {
        "reason": reason,
        "worker": worker,
        "at": time.time() if now is None else now,
        "tries": tries,
        "topic": topic,
    }
    try:
        record["message"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        record["message_hex"] = raw.hex()
    if traceback:
        record["traceback"] = traceback
    # ASCII: a string of the message (a topic with a lone surrogate, valid JSON) is written
    # escaped, where UTF-8 could not encode it and would raise mid-transaction.
    return json.dumps(record, ensure_ascii=True).encode("ascii")


def parse_dead_letter(entry: bytes) -> DeadLetter:
    """Reads a dead-letter entry; never raises: an entry written by anything else than a
    tuitop (anyone may write to the Redis) reads as what it can say, the rest defaults."""
    try:
        record = json.loads(entry)
    except (ValueError, RecursionError):
        record = None
    if not isinstance(record, dict):
        return DeadLetter(entry, "unreadable dead-letter entry", "", 0.0, 0, "", "", entry)
    message = entry
    with contextlib.suppress(ValueError, TypeError):
        if "message_hex" in record:
            message = bytes.fromhex(str(record["message_hex"]))
        else:
            message = str(record.get("message", "")).encode("utf-8", "replace")
    return DeadLetter(
        message=message,
        reason=_text_field(record, "reason"),
        worker=_text_field(record, "worker"),
        at=_number_field(record, "at", MAX_TIMESTAMP),
        tries=int(_number_field(record, "tries", 1000.0)),
        topic=_text_field(record, "topic"),
        traceback=_text_field(record, "traceback"),
        entry=entry,
    )


MAX_TIMESTAMP = 2.0**33
"""The year 2242: a time past it in a dead letter is none (it could not be shown)."""


def _text_field(record: dict[str, Any], name: str) -> str:
    value = record.get(name, "")
    # A lone surrogate (valid JSON: "\ud800") cannot be printed nor encoded: replaced.
    return str(value).encode("utf-8", "replace").decode("utf-8")


def _number_field(record: dict[str, Any], name: str, limit: float) -> float:
    value = record.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    number = float(value) if math.isfinite(value) else 0.0
    return number if 0 <= number <= limit else 0.0


class Queue:
    """The queue operations on one Redis connection. Not thread-safe: one per thread."""

    def __init__(
        self, redis: Redis, retry: RetryPolicy | None = None, plan: TakePlan | None = None
    ) -> None:
        """``plan``: where :meth:`take` and :meth:`take_blocking` take from (Tuleap's list
        by default)."""
        self.redis = redis
        self.retry_policy = retry or RetryPolicy()
        self.plan = plan or TakePlan()
        self._take_keys, self._take_args = self.plan.script_keys_and_args()
        self._take = redis.register_script(_TAKE_SCRIPT)
        self._route = redis.register_script(_ROUTE_SCRIPT)
        self._recover_lanes = redis.register_script(_RECOVER_LANES_SCRIPT)
        self._move_due = redis.register_script(_MOVE_DUE_SCRIPT)
        self._give_back = redis.register_script(_GIVE_BACK_SCRIPT)
        self._replay = redis.register_script(_REPLAY_SCRIPT)

    # --- producers -----------------------------------------------------------------------

    def push(self, raw: bytes) -> None:
        """LPUSH one message, as Tuleap's front end does, and count it."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(keys.QUEUE, raw)
        _count(pipe, Outcome.ENQUEUED, 1)
        pipe.execute()

    def push_marked(self, raw: bytes, token: str) -> None:
        """As ``push``, and sets the marker of ``token`` (a unique string) for a few
        minutes, in the same transaction: whoever lost the reply can tell whether it was
        pushed (:meth:`was_pushed`)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(keys.QUEUE, raw)
        pipe.set(keys.push_marker(token), 1, ex=keys.PUSH_MARKER_SECONDS)
        _count(pipe, Outcome.ENQUEUED, 1)
        pipe.execute()

    def was_pushed(self, token: str) -> bool:
        """Whether the push of ``token`` happened (within the marker's minutes)."""
        return bool(self.redis.exists(keys.push_marker(token)))

    # --- workers -------------------------------------------------------------------------

    def take(self, worker_id: str, max_batch: int) -> list[bytes]:
        """Moves up to ``max_batch`` messages (at least one when any) into the processing
        list without blocking; returns them oldest first. Empty when the queue is empty."""
        return self.take_or_count(worker_id, max_batch).messages

    def take_or_count(self, worker_id: str, max_batch: int) -> Taken:
        """As ``take``, in the same round trip, saying which list they came from; when
        nothing was taken, also how many messages the processing list holds."""
        result = self._take(
            keys=[keys.processing_list(worker_id), *self._take_keys],
            args=[max_batch, *self._take_args],
        )
        return self.taken(result)

    def take_into(self, pipe: Pipeline, worker_id: str, max_batch: int) -> None:
        """Queues :meth:`take_or_count` on ``pipe`` (after the acks it carries: one round
        trip for both); :meth:`taken` reads its reply. EVALSHA, not the registered
        Script: in a pipeline that sends SCRIPT EXISTS first, a round trip of its own; the
        caller takes again alone on NOSCRIPT (Redis lost its scripts)."""
        pipe.evalsha(
            self._take.sha,
            1 + len(self._take_keys),
            keys.processing_list(worker_id),
            *self._take_keys,
            max_batch,
            *self._take_args,
        )

    def taken(self, result: Any) -> Taken:
        """What the take script's reply says was taken (see :meth:`take_or_count`)."""
        if isinstance(result, int):
            return Taken([], keys.QUEUE, result)
        source, *messages = cast(list[Any], result)
        return Taken(messages, self.plan.sources[int(source) - 1], 0)

    def take_blocking(self, worker_id: str, timeout: float) -> Waited:
        """Waits up to ``timeout`` seconds for one message of Tuleap's list (BLMOVE, never
        polling); one of a lane the worker does not serve is moved to that lane's list
        (``routed``: the caller takes again, which routes the rest of a burst in batches)."""
        # redis-py types the timeout as int; Redis >= 6 takes a decimal number of seconds.
        value = cast(
            bytes | None,
            self.redis.blmove(
                keys.QUEUE,
                keys.processing_list(worker_id),
                timeout,  # type: ignore[arg-type]
                "RIGHT",
                "LEFT",
            ),
        )
        if value is None or not self.plan.lanes.reserved:
            return Waited(value)
        topic = routing_topic(value)
        lane = None if topic is None else self.plan.route(topic)
        if lane is None:
            return Waited(value)
        self._route(
            keys=[keys.processing_list(worker_id), keys.lane_list(lane), keys.LANES],
            args=[value, lane],
        )
        return Waited(None, routed=True)

    def recover_unserved_lanes(self, unserved_after: float, limit: int = 1000) -> dict[str, int]:
        """Moves back to Tuleap's list the messages of lanes no pool has served for
        ``unserved_after`` seconds (at most ``limit`` a call); returns how many, by lane."""
        return self._lanes_back([unserved_after, limit, keys.LANE_PREFIX])

    def list_lanes(self) -> list[str]:
        """Lists in the lanes' set every lane whose list holds messages and is not there
        (left by a tuitop older than that set's rule), as not served since long: moved
        back unless a pool serves it. SCAN: it never blocks Redis. Returns those listed."""
        listed = []
        for key in self.redis.scan_iter(match=f"{keys.LANE_PREFIX}*", count=1000):
            lane = key.decode("utf-8", "replace").removeprefix(keys.LANE_PREFIX)
            if self.redis.zadd(keys.LANES, {lane: 0}, nx=True):
                listed.append(lane)
        return listed

    def live_pools(self) -> list[str]:
        """Pools and workers that show a sign of life: a pool's heartbeat or name claim, a
        worker alive (a worker whose pool was killed finishes its job, beating)."""
        client = self.redis
        names = keys.names_in(cast(set[bytes], client.smembers(keys.POOLS)))
        workers = keys.names_in(cast(set[bytes], client.smembers(keys.WORKERS)))
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.exists(keys.pool(name), keys.pool(name) + ":owner")
        signs = pipe.execute() if names else []
        live = [f"pool {name}" for name, sign in zip(names, signs, strict=True) if sign]
        live += [
            f"worker {worker_id}"
            for worker_id, sign in zip(workers, alive_in(client, workers), strict=True)
            if sign
        ]
        return live

    def hand_back(self, reason: str) -> HandBack:
        """Gives Tuleap's list everything only a tuitop reads, once no tuitop runs (Tuleap's
        workers take over): what tuitop's workers held (recovered: one more try, or dead-
        lettered past the last; never the list of a worker that still beats), the lanes'
        lists, and the retries waiting their time, at the head of the queue. The caller
        makes sure no pool runs (:meth:`live_pools`)."""
        workers = set(keys.names_in(cast(set[bytes], self.redis.smembers(keys.WORKERS))))
        prefix = keys.processing_list("")
        lists = self.redis.scan_iter(match=keys.PROCESSING_PATTERN, count=1000, _type="list")
        for key in lists:  # a key of another type is nobody's list (its LRANGE would fail)
            suffix = key.decode("utf-8", "replace").removeprefix(prefix)
            if not (suffix.isascii() and suffix.isdigit()):  # Tuleap's: adopt-tuleap's
                workers.add(suffix)
        recovered = sum(
            self.recover(worker_id, reason, unless_beating=True).total
            for worker_id in sorted(workers)
        )
        self.list_lanes()
        lanes = keys.names_in(cast(list[bytes], self.redis.zrange(keys.LANES, 0, -1)))
        moved = self.move_lanes_back(lanes) if lanes else {}
        retries = 0
        while True:
            count = self.move_due(now=math.inf)
            retries += count
            if count == 0:
                return HandBack(recovered, moved, retries)

    def move_lanes_back(self, lanes: Sequence[str], limit: int = 10_000) -> dict[str, int]:
        """Moves the messages of ``lanes`` back to Tuleap's list (a pool that was the last
        to serve them stops), ``limit`` a round trip until they are empty; returns how
        many, by lane."""
        moved: dict[str, int] = {}
        while lanes:
            report = self._lanes_back([0, limit, keys.LANE_PREFIX, *lanes])
            for lane, count in report.items():
                moved[lane] = moved.get(lane, 0) + count
            if sum(report.values()) < limit:
                return moved
        return moved

    def _lanes_back(self, args: list[Any]) -> dict[str, int]:
        report = cast(list[Any], self._recover_lanes(keys=[keys.QUEUE, keys.LANES], args=args))
        return {
            report[i].decode("utf-8", "replace"): int(report[i + 1])
            for i in range(0, len(report), 2)
        }

    def ack_into(self, pipe: Pipeline, worker_id: str, raws: Sequence[bytes]) -> None:
        """Queues the removal of finished messages (oldest first) on ``pipe`` (the caller
        executes it); its reply has, per message, ``1`` when removed and ``0`` when it was no
        longer there."""
        if raws:
            # EVAL, not a registered Script: in a pipeline redis-py sends SCRIPT EXISTS first,
            # a round trip of its own; Redis caches the compiled body anyway.
            pipe.eval(_ACK_SCRIPT, 1, keys.processing_list(worker_id), *raws)

    def give_back(self, worker_id: str, raws: Sequence[bytes], to: str = keys.QUEUE) -> None:
        """Returns messages taken but not started to the head of the list ``to`` they came
        from, in order, with their try count unchanged (they were never tried). One no
        longer in the processing list (recovered meanwhile) is not given back: it is
        already elsewhere."""
        if not raws:
            return
        self._give_back(keys=[keys.processing_list(worker_id), to], args=list(reversed(raws)))

    def fail(
        self,
        worker_id: str,
        raw: bytes,
        reason: str,
        *,
        traceback: str = "",
        retryable: bool = True,
        replacement: bytes | None = None,
        outcome: Outcome = Outcome.FAILED,
    ) -> Outcome:
        """Takes a message that failed out of the processing list, atomically into the
        delayed set (for a retry) or the dead-letter list. ``replacement`` is what to retry
        instead (e.g. a notification without the mails already sent). Returns RETRIED or
        DEAD, or GONE when the message was no longer in the processing list
        (a supervisor recovered it meanwhile): then nothing is written."""
        processing = keys.processing_list(worker_id)
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(processing)  # type: ignore[no-untyped-call]
                    if pipe.lpos(processing, raw) is None:  # type: ignore[arg-type]
                        return Outcome.GONE
                    pipe.multi()
                    pipe.lrem(processing, 1, raw)  # type: ignore[arg-type]  # bytes are fine
                    result = self._reschedule(
                        pipe,
                        replacement if replacement is not None else raw,
                        reason,
                        worker_id,
                        traceback=traceback,
                        retryable=retryable,
                    )
                    _count(pipe, outcome, 1)
                    _count(pipe, result, 1)
                    pipe.execute()
                    return result
                except WatchError:
                    continue

    # --- supervisors -----------------------------------------------------------------------

    def recover(
        self,
        worker_id: str,
        reason: str,
        *,
        forget_worker: bool = True,
        unless_beating: bool = False,
        traceback: str = "",
        timed_out: TimedOut | None = None,
    ) -> Recovery:
        """Moves everything in ``worker_id``'s processing list back (delayed, try + 1) or to
        the dead-letter list, atomically; safe to run from several places at once.

        With ``unless_beating`` nothing is done while the worker's heartbeat exists, checked
        in the same transaction (for workers found silent: one may beat again meanwhile).
        ``traceback`` is kept with what is dead-lettered (the worker's stack when killed);
        ``timed_out``: the job it was killed for at the time limit is given up."""
        processing = keys.processing_list(worker_id)
        alive, pool = keys.worker_alive(worker_id), keys.pool(keys.pool_of(worker_id))
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(processing, alive, pool)  # type: ignore[no-untyped-call]
                    if unless_beating and _alive(
                        pipe.exists(alive), pipe.hget(pool, "workers"), worker_id
                    ):
                        pipe.unwatch()
                        return Recovery(0, 0)
                    raws = cast(list[bytes], pipe.lrange(processing, 0, -1))
                    pipe.multi()
                    outcomes = []
                    # The list's tail holds what was taken first: recover it first.
                    held = [decode(raw) for raw in reversed(raws)]
                    fates = recovery_fates(held, reason, timed_out)
                    for raw, message, (why, retryable) in zip(
                        reversed(raws), held, fates, strict=True
                    ):
                        done = self._reschedule(
                            pipe, raw, why, worker_id, traceback=traceback, retryable=retryable
                        )
                        outcomes.append((message.topic, done))
                    requeued = sum(done is Outcome.RETRIED for _, done in outcomes)
                    dead = len(outcomes) - requeued
                    pipe.delete(processing, keys.worker_lease(worker_id), alive)
                    if forget_worker:
                        pipe.srem(keys.WORKERS, worker_id)
                        pipe.delete(keys.heartbeat(worker_id))
                    if requeued:
                        _count(pipe, Outcome.RETRIED, requeued)
                    if dead:
                        _count(pipe, Outcome.DEAD, dead)
                    pipe.execute()
                    return Recovery(requeued, dead, tuple(outcomes))
                except WatchError:
                    continue

    def move_due(self, now: float | None = None, limit: int = 1000) -> int:
        """Moves delayed messages whose time has come (by Redis' clock, or ``now``) to the
        head of the queue."""
        moment: float | str = "now" if now is None else now
        return int(cast(int, self._move_due(keys=[keys.DELAYED, keys.QUEUE], args=[moment, limit])))

    def due_in(self) -> float | None:
        """Seconds until the next delayed message is due, by Redis' clock (read in the
        same round trip), or None."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrange(keys.DELAYED, 0, 0, withscores=True)
        pipe.time()
        first, (seconds, microseconds) = pipe.execute()
        return float(first[0][1]) - (seconds + microseconds / 1e6) if first else None

    # --- dead letters --------------------------------------------------------------------

    def dead_letters(self, start: int = 0, count: int = 50) -> list[DeadLetter]:
        """Dead letters, newest first."""
        entries = cast(list[bytes], self.redis.lrange(keys.DEAD_LETTERS, start, start + count - 1))
        return [parse_dead_letter(entry) for entry in entries]

    def replay(self, letter: DeadLetter, *, from_oldest: bool = False) -> bool:
        """Puts a dead letter back at the end of the queue with a fresh try count, in one
        script; False when it was no longer there (replayed or purged by someone else).
        ``from_oldest``: look for it from the oldest end (where replay_all takes them)."""
        message = letter.message
        # One unusable as it is is replayed as it is, and dead-lettered again with why.
        with contextlib.suppress(ValueError):
            message = with_queued_total(message, 0)
        removed = self._replay(
            keys=[keys.DEAD_LETTERS, keys.QUEUE],
            args=[letter.entry, message, -1 if from_oldest else 1],
        )
        return bool(removed)

    def replay_all(self, chunk: int = 1000) -> int:
        """Replays every dead letter there is when it is called (oldest first, as they
        died), ``chunk`` read at a time; those that die again meanwhile are not replayed
        twice. Returns how many were replayed."""
        left = int(self.redis.llen(keys.DEAD_LETTERS))
        replayed = 0
        while left > 0:
            count = min(chunk, left)
            entries = cast(list[bytes], self.redis.lrange(keys.DEAD_LETTERS, -count, -1))
            if not entries:
                break
            for entry in reversed(entries):  # the oldest, at the tail, first
                replayed += self.replay(parse_dead_letter(entry), from_oldest=True)
            left -= len(entries)
        return replayed

    def purge_dead_letters(self) -> int:
        """Deletes every dead letter; returns how many there were."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.llen(keys.DEAD_LETTERS)
        pipe.delete(keys.DEAD_LETTERS)
        count, _ = pipe.execute()
        return int(count)

    # --- internals -------------------------------------------------------------------------

    def _reschedule(
        self,
        pipe: Pipeline,
        raw: bytes,
        reason: str,
        worker_id: str,
        *,
        traceback: str = "",
        retryable: bool = True,
    ) -> Outcome:
        """Queues on ``pipe`` the move of ``raw`` (out of a worker's hands) to where
        :meth:`RetryPolicy.decide` sends it; returns that outcome (RETRIED or DEAD)."""
        message = decode(raw)
        decision = self.retry_policy.decide(message, reason, retryable=retryable)
        why = decision.why
        if decision.retried:
            try:
                retry = with_queued_total(raw, decision.tries)
            except (ValueError, TypeError) as error:
                # Never raise here (the caller is mid-transaction): keep it, with why.
                why = not_written_back(reason, error)
            else:
                # Due by Redis' clock, the one move_due reads: a host whose clock is off
                # must not spend a retry early, nor hold it for hours.
                member = uuid.uuid4().hex.encode() + b"|" + retry
                pipe.eval(_SCHEDULE_SCRIPT, 1, keys.DELAYED, decision.delay, member)
                return Outcome.RETRIED
        entry = dead_letter_entry(
            raw,
            why,
            worker=worker_id,
            tries=message.queued_total,
            topic=message.topic,
            traceback=traceback,
        )
        pipe.lpush(keys.DEAD_LETTERS, entry)
        return Outcome.DEAD


def _count(pipe: Pipeline, outcome: str, count: int) -> None:
    batch = StatsBatch()
    batch.outcome(outcome, count)
    flush_into(batch, pipe, time.time())
