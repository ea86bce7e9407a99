"""What a pool does in one Redis (:class:`~tuitop.backends.base.PoolStore`): its name
and heartbeat, the config it publishes, recoveries, due retries, the scans."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import cast

import redis

from tuitop.backends.base import (
    COMMAND_TTL,
    LeftBehind,
    Recovery,
    RetryPolicy,
    TimedOut,
)
from tuitop.backends.errors import (
    at_the_edge,
)
from tuitop.backends.redis import keys, tuleapworkers
from tuitop.backends.redis.connection import ERRORS, connect, redis_clock, translate
from tuitop.backends.redis.mailbox import MailboxWatch
from tuitop.backends.redis.queue import Queue, alive_in
from tuitop.backends.redis.stats import POOL_TICK_SCRIPT, flush_into, pool_tick
from tuitop.beats import PoolBeat
from tuitop.config import RedisSettings
from tuitop.outcome import Outcome
from tuitop.stats import StatsBatch, bucket_start

NAME_LISTED_EVERY = 60.0
STRANDED_SCAN_EVERY = 60.0
"""How often a pool looks for lists no registered worker holds (a SCAN of the keys)."""


# Claims the pool's name, or extends the claim, while nobody else holds it (a claim that
# expired while Redis was away is simply taken again).
_CLAIM_NAME_SCRIPT = """
local owner = redis.call('GET', KEYS[1])
if owner == false or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""


def _owner_key(name: str) -> str:
    return keys.pool(name) + ":owner"


@at_the_edge(ERRORS, lambda self, error: translate(error, self.settings))
class RedisPoolStore:
    """What a pool does in one Redis (:class:`~tuitop.backends.base.PoolStore`)."""

    def __init__(
        self, settings: RedisSettings, *, pool_name: str, retry: RetryPolicy, socket_timeout: float
    ) -> None:
        self.settings = settings
        self.client = connect(
            settings, client_name=f"tuitop:{pool_name}:supervisor", socket_timeout=socket_timeout
        )
        self.queue = Queue(self.client, retry)
        self._claim = self.client.register_script(_CLAIM_NAME_SCRIPT)
        self._sampled = 0
        """The stats bucket whose depth it sampled last (one sample a bucket is all a
        view reads)."""
        self._listed_at = -math.inf
        """When (monotonic) it last added its name to the set of pools."""
        self._stranded_at = -math.inf
        """When (monotonic) it last looked for lists no registered worker holds."""
        self._lists: list[bytes] = []
        self._lists_at = -math.inf
        """The processing lists' keys, and when (monotonic) its last SCAN found them."""

    def ping(self) -> None:
        self.client.ping()

    # --- the name, the heartbeat, the config -------------------------------------------

    def claim_name(self, name: str, token: str, ttl: int) -> bool:
        return bool(self._claim(keys=[_owner_key(name)], args=[token, ttl]))

    def name_owner(self, name: str) -> str:
        owner = cast(bytes | None, self.client.get(_owner_key(name)))
        return (owner or b"").decode(errors="replace")

    def release_name(self, name: str, token: str) -> None:
        if self.client.get(_owner_key(name)) == token.encode():
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(_owner_key(name), keys.pool(name))
            pipe.srem(keys.POOLS, name)
            pipe.execute()

    def publish(
        self, name: str, beat: PoolBeat, ttl: int, served: set[str], stopping: bool
    ) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(keys.pool(name), mapping=beat.fields())  # type: ignore[arg-type]
        pipe.expire(keys.pool(name), ttl)
        now = time.monotonic()
        # The set of names is read by views and cleaned by pools: said again every
        # minute (a cleaning pool may have found this one's hash expired, the store away).
        listed = now - self._listed_at >= NAME_LISTED_EVERY
        if listed:
            pipe.sadd(keys.POOLS, name)
        bucket = bucket_start(beat.beat)
        tick = None if stopping else pool_tick(served, beat.beat, sample=bucket != self._sampled)
        if tick is not None:
            # EVAL, not a registered Script: in a pipeline redis-py sends SCRIPT EXISTS
            # first, a command of its own every beat.
            pipe.eval(POOL_TICK_SCRIPT, len(tick[0]), *tick[0], *tick[1])
        replies = pipe.execute()
        if not listed and replies[0]:
            # Its hash was gone (HSET made new fields: a restart without persistence, an
            # expiry): so may be the set of names, which views read. Said again now.
            self.client.sadd(keys.POOLS, name)
            listed = True
        if listed:
            self._listed_at = now
        if tick is not None:
            self._sampled = bucket

    def publish_config(self, fields: Mapping[str, str | int | float]) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hincrby(keys.CONFIG, "version", 1)
        pipe.hset(keys.CONFIG, mapping=dict(fields))  # type: ignore[arg-type]
        pipe.execute()

    # --- what workers held ---------------------------------------------------------------

    def recover(
        self,
        worker_id: str,
        reason: str,
        *,
        unless_beating: bool = False,
        traceback: str = "",
        timed_out: TimedOut | None = None,
    ) -> Recovery:
        recovery = self.queue.recover(
            worker_id,
            reason,
            unless_beating=unless_beating,
            traceback=traceback,
            timed_out=timed_out,
        )
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(keys.heartbeat(worker_id))
        if timed_out is not None:
            batch = StatsBatch()
            batch.outcome(Outcome.TIMEDOUT)
            flush_into(batch, pipe, time.time())
        pipe.execute()
        return recovery

    def move_due(self) -> int:
        return self.queue.move_due()

    def due_in(self) -> float | None:
        return self.queue.due_in()

    def silent_workers(self, ours: set[str]) -> list[str]:
        raw_members = cast(set[bytes], self.client.smembers(keys.WORKERS))
        if junk := keys.not_names_in(raw_members):
            self.client.srem(keys.WORKERS, *junk)  # no worker of a tuitop's: no list to recover
        candidates = [
            worker_id for worker_id in keys.names_in(raw_members) if worker_id not in ours
        ]
        alive = alive_in(self.client, candidates)
        silent = [w for w, live in zip(candidates, alive, strict=True) if not live]
        return silent + [w for w in self._stranded(ours) if w not in silent]

    def _stranded(self, ours: set[str]) -> list[str]:
        """The workers, every STRANDED_SCAN_EVERY s, whose processing list holds messages
        though they are neither registered nor leased: a worker recovered while frozen
        whose still-pending BLMOVE then moved a message into its list (Redis does it,
        not the worker), or that took once thawed, and was killed before it could give
        them back. No recovery would look there again (it unregistered them); the
        database's finds them as rows without a live worker row."""
        now = time.monotonic()
        if now - self._stranded_at < STRANDED_SCAN_EVERY:
            return []
        self._stranded_at = now
        prefix = keys.processing_list("").encode()
        found = []
        for key in self._processing_lists():
            try:
                worker_id = bytes(key).removeprefix(prefix).decode()
            except UnicodeDecodeError:
                continue  # not a tuitop's (its ids are text): nobody's list to recover
            if worker_id.isascii() and worker_id.isdigit():
                continue  # a Tuleap worker's (left_behind sees to those)
            if worker_id and worker_id not in ours:
                found.append(worker_id)
        if not found:
            return []
        pipe = self.client.pipeline(transaction=False)
        for worker_id in found:
            pipe.sismember(keys.WORKERS, worker_id)
            pipe.exists(keys.worker_lease(worker_id))
            pipe.llen(keys.processing_list(worker_id))
        # An error in a reply: the key changed type since the SCAN (not a list to recover).
        replies = pipe.execute(raise_on_error=False)
        return [
            worker_id
            for index, worker_id in enumerate(found)
            if not any(replies[3 * index : 3 * index + 2])
            and isinstance(replies[3 * index + 2], int)
            and replies[3 * index + 2]
        ]

    def clock(self) -> float:
        return redis_clock(self.client)

    def take_commands(self, name: str, limit: int) -> list[bytes]:
        mailbox = keys.control(name)
        try:
            taken = self.client.lpop(mailbox, limit)
        except redis.ResponseError as error:
            if "WRONGTYPE" not in str(error):
                raise
            # Not a list (written by something else): no command is in it, and it must
            # not fail the pool's every turn (the link would take Redis for away).
            self.client.delete(mailbox)
            return []
        return cast(list[bytes], taken or [])

    def reply(self, command_id: str, body: bytes) -> None:
        pipe = self.client.pipeline(transaction=True)
        # Whatever is there is replaced: a key of another type (left by anyone) must not
        # fail the reply, and the pool's link with it.
        pipe.delete(keys.control_reply(command_id))
        pipe.rpush(keys.control_reply(command_id), body)
        pipe.expire(keys.control_reply(command_id), COMMAND_TTL)
        pipe.execute()

    def forget_gone_pools(self) -> None:
        members = cast(set[bytes], self.client.smembers(keys.POOLS))
        if junk := keys.not_names_in(members):
            self.client.srem(keys.POOLS, *junk)
        names = keys.names_in(members)
        if not names:
            return
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.exists(keys.pool(name), _owner_key(name))
        gone = [name for name, alive in zip(names, pipe.execute(), strict=True) if not alive]
        if gone:
            self.client.srem(keys.POOLS, *gone)

    def left_behind(self, hold_limit: float) -> list[LeftBehind]:
        return [
            LeftBehind(found.worker_id, found.number, found.messages)
            for found in tuleapworkers.left_behind(
                self.client,
                hold_limit,
                self._processing_lists(min(STRANDED_SCAN_EVERY, hold_limit / 4)),
            )
        ]

    def _processing_lists(self, max_age: float = STRANDED_SCAN_EVERY) -> list[bytes]:
        """The keys of the processing lists, found by a SCAN at most ``max_age`` s ago:
        one SCAN shared by the looks for Tuleap's lists and for stranded ones (its cost
        grows with the whole keyspace: 0.8 s at a million keys, on the pool's loop)."""
        now = time.monotonic()
        if now - self._lists_at >= max_age:
            self._lists = tuleapworkers.processing_lists(self.client)
            self._lists_at = now
        return self._lists

    # --- lanes ---------------------------------------------------------------------------

    def unserved_lanes_back(self, unserved_after: float) -> dict[str, int]:
        return self.queue.recover_unserved_lanes(unserved_after)

    def list_forgotten_lanes(self) -> list[str]:
        return self.queue.list_lanes()

    def release_lanes(self, name: str, lanes: set[str]) -> dict[str, int]:
        names = keys.names_in(cast(set[bytes], self.client.smembers(keys.POOLS)))
        pipe = self.client.pipeline(transaction=False)
        for other in names:
            if other != name:
                pipe.hgetall(keys.pool(other))
        still = {lane for fields in pipe.execute() for lane in PoolBeat.parse(fields).served}
        orphans = sorted(lanes - still)
        return self.queue.move_lanes_back(orphans) if orphans else {}

    # --- the rest ------------------------------------------------------------------------

    def watch_mailbox(
        self, name: str, wake: Callable[[], None], logger: logging.Logger
    ) -> MailboxWatch:
        return MailboxWatch(self.settings, name, wake, logger)

    def doorbell(
        self,
        in_force: Callable[[], bool],
        any_idle: Callable[[], bool],
        ring_idle: Callable[[], None],
        logger: logging.Logger,
        interval: float,
    ) -> None:
        return None  # an idle worker waits in BLMOVE: Redis itself wakes it

    def holds(self) -> tuple[int, int]:
        lanes = keys.names_in(cast(list[bytes], self.client.zrange(keys.LANES, 0, -1)))
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(keys.DELAYED)
        for key in (keys.QUEUE, *(keys.lane_list(lane) for lane in lanes)):
            pipe.llen(key)
        delayed, *depths = pipe.execute()
        return sum(depths), int(delayed)

    def close(self) -> None:
        self.client.close()
