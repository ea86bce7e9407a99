"""The pool's presence in Redis: its name, its heartbeat, the config it publishes, its lanes.

* **The name** (``tuitop:pool:<name>:owner``, a lease of ``heartbeat_ttl`` renewed every
  tick): two pools never run under one name, so worker ids never meet. A pool that finds
  its name taken (its lease expired while Redis was away, and another took it) stops its
  workers and waits.
* **The heartbeat** (``keys.pool(name)``, a :class:`~tuitop.beats.PoolBeat` with the same
  TTL): what every view shows; kept to the end of a warm stop, marked ``stopping``.
* **The config** (``keys.CONFIG``): the async scope in force, versioned, for producers on
  other hosts (the Notifier reads it instead of the files). Last writer wins among pools.
* **The lanes**: those its workers served go back to Tuleap's list as it stops or leaves a
  Redis, unless another live pool serves them.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, cast

import redis

from tuitop import keys
from tuitop.beats import PoolBeat
from tuitop.config import RedisSettings
from tuitop.pool.configuration import Configuration
from tuitop.pool.link import RedisLink
from tuitop.queue import Queue
from tuitop.redisconn import describe_error
from tuitop.stats import POOL_TICK_SCRIPT, pool_tick

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


class Presence:
    """This pool in the Redis of ``link``."""

    def __init__(
        self, link: RedisLink, name: str, heartbeat_ttl: float, logger: logging.Logger
    ) -> None:
        self.link = link
        self.name = name
        self.ttl = int(heartbeat_ttl)
        self.logger = logger
        self.token = f"{socket.gethostname()}:{os.getpid()}:{time.time()}"
        self.owns_name = False
        self.config_published = False
        """The config in force is published (a new load, or another Redis, sets it False)."""
        self.served_lanes: set[str] = set()
        """Every lane a worker of this pool served since it started (and its workers may
        have moved messages to): released as the pool stops."""
        self._claim: Any = None
        self._tick: Any = None

    @property
    def _owner_key(self) -> str:
        return keys.pool(self.name) + ":owner"

    def _client(self) -> redis.Redis:
        client = self.link.client
        assert client is not None
        if self._claim is None:
            # Scripts are called with an explicit client: one registration serves every
            # client the link makes.
            self._claim = client.register_script(_CLAIM_NAME_SCRIPT)
            self._tick = client.register_script(POOL_TICK_SCRIPT)
        return client

    # --- the name ------------------------------------------------------------------------

    def claim(self) -> bool:
        """Takes (or renews) the name; False, said in the log, when another pool holds it."""
        client = self._client()
        if self._claim(keys=[self._owner_key], args=[self.token, self.ttl], client=client):
            self.owns_name = True
            return True
        if self.owns_name:
            self.logger.error(
                "Pool name %s was taken over by another pool; stopping this pool's workers",
                self.name,
            )
        else:
            owner = cast(bytes | None, client.get(self._owner_key))
            self.logger.error(
                "Another pool named %s is running (%s); start this one with another "
                "--pool-name. Trying again in %d s",
                self.name,
                (owner or b"?").decode(errors="replace"),
                self.ttl,
            )
        self.owns_name = False
        return False

    def release(self) -> None:
        """Gives the name up (and the heartbeat), if it is still this pool's."""
        client = self.link.client
        if not (self.owns_name and client is not None):
            return
        try:
            if client.get(self._owner_key) == self.token.encode():
                pipe = client.pipeline(transaction=True)
                pipe.delete(self._owner_key, keys.pool(self.name))
                pipe.srem(keys.POOLS, self.name)
                pipe.execute()
        except redis.RedisError:
            pass  # it expires on its own
        self.owns_name = False

    # --- the heartbeat and the config ----------------------------------------------------

    def publish(
        self, config: Configuration, *, running: int, served: set[str], stopping: bool
    ) -> bool:
        """Writes the heartbeat (and, while not ``stopping``, the lanes ``served`` and the
        depth history every view draws), the config when not yet published, and renews
        the name: False when the name was lost. Raises redis.RedisError."""
        client = self._client()
        settings = config.settings
        beat = PoolBeat(
            host=socket.gethostname(),
            pid=os.getpid(),
            wanted=config.wanted,
            configured=settings.backend_workers,
            running=running,
            files=tuple(settings.files),
            log_level=str(settings.log_level),
            async_scope=str(settings.async_scope),
            lanes=settings.lanes.describe(),
            served=() if stopping else tuple(sorted(served)),
            redis=settings.redis.address,
            loaded_at=config.loaded_at,
            config_error=config.error,
            stopping=stopping,
            beat=time.time(),
        )
        pipe = client.pipeline(transaction=False)
        pipe.hset(keys.pool(self.name), mapping=beat.fields())  # type: ignore[arg-type]
        pipe.expire(keys.pool(self.name), self.ttl)
        pipe.sadd(keys.POOLS, self.name)
        if not stopping:
            tick_keys, tick_args = pool_tick(served, beat.beat)
            self._tick(keys=tick_keys, args=tick_args, client=pipe)
        pipe.execute()
        if not self.config_published and not stopping:
            self._publish_config(client, config)
        return self.claim()

    def _publish_config(self, client: redis.Redis, config: Configuration) -> None:
        settings = config.settings
        pipe = client.pipeline(transaction=True)
        pipe.hincrby(keys.CONFIG, "version", 1)
        pipe.hset(
            keys.CONFIG,
            mapping={
                "async_scope": str(settings.async_scope),
                "log_level": str(settings.log_level),
                "workers": settings.backend_workers,
                "pool": self.name,
                "loaded_at": config.loaded_at,
                "config_error": config.error,
            },
        )
        pipe.execute()
        self.config_published = True

    # --- the lanes -----------------------------------------------------------------------

    def release_lanes(self, queue: Queue, where: RedisSettings) -> None:
        """The lanes this pool served that no other live pool on ``queue``'s Redis serves
        go back to Tuleap's list there, as the pool stops or leaves that Redis: nothing
        waits in a list that only a tuitop reads once none runs (a Tuleap worker taking
        over, Tuleap's SYSTEM_CHECK)."""
        if not self.served_lanes:
            return
        client = queue.redis
        try:
            names = keys.names_in(cast(set[bytes], client.smembers(keys.POOLS)))
            others = [name for name in names if name != self.name]
            pipe = client.pipeline(transaction=False)
            for name in others:
                pipe.hgetall(keys.pool(name))
            still = {lane for fields in pipe.execute() for lane in PoolBeat.parse(fields).served}
            lanes = sorted(self.served_lanes - still)
            moved = queue.move_lanes_back(lanes) if lanes else {}
        except redis.RedisError as error:
            self.logger.warning(
                "Could not move this pool's lanes back to %s on %s: %s (the next pool to "
                "start there does it)",
                keys.QUEUE,
                where.address,
                describe_error(error, where),
            )
            return
        for lane, count in moved.items():
            self.logger.warning(
                "No other pool serves lane %s on %s: %d message(s) moved back to %s",
                lane,
                where.address,
                count,
                keys.QUEUE,
            )
