"""What wakes the pool is made for the store in force (arbiter._tend_doorbell,
_mailbox_due): the database's doorbell, Redis' mailbox watch. A pool whose config
switches Redis → the database → Redis → the database keeps exactly one of each that its
store has, running, and none of the store it left (no thread left behind, none missing)."""

from __future__ import annotations

import threading
import time

from tuitop.config import DB_QUEUE, REDIS_QUEUE, DatabaseSettings, RedisSettings, Settings
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.pool.arbiter import Supervisor
from tuitop.pool.options import PoolOptions


def _threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


def _settle(supervisor: Supervisor, store: str) -> None:
    """Turns the pool's loop until it is up on the store the config names."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        supervisor._cycle_once()
        link = supervisor.link
        if link.ok and link.store is not None and link.store.settings.kind == store:
            supervisor._cycle_once()  # the turn that tends the watches of that store
            return
        time.sleep(0.1)
    raise AssertionError(f"the pool never came up on {store}")


def test_a_pool_switching_stores_keeps_one_doorbell_or_mailbox_watch_for_the_store_in_force(
    redis_server: EmbeddedRedis, database: DatabaseSettings
) -> None:
    on_redis = Settings(
        redis=RedisSettings("127.0.0.1", redis_server.port),
        database=database,
        queue=REDIS_QUEUE,
        backend_workers=0,
    )
    on_db = Settings(
        redis=RedisSettings("127.0.0.1", redis_server.port),
        database=database,
        queue=DB_QUEUE,
        backend_workers=0,
    )
    supervisor = Supervisor(on_redis, PoolOptions(pool_name="switch", log_to_stderr=False))
    try:
        for settings, store in [(on_redis, REDIS_QUEUE), (on_db, DB_QUEUE)] * 2:
            supervisor.apply(settings)
            _settle(supervisor, store)
            time.sleep(0.3)  # a stopped thread is gone by now
            if store == DB_QUEUE:
                assert supervisor.doorbell is not None and supervisor.doorbell.is_alive()
                assert supervisor._mailbox is None
                assert len(_threads("doorbell")) == 1 and _threads("mailbox-") == []
            else:
                assert supervisor.doorbell is None
                assert supervisor._mailbox is not None and supervisor._mailbox.is_alive()
                assert len(_threads("mailbox-")) == 1 and _threads("doorbell") == []
    finally:
        if supervisor.doorbell is not None:
            supervisor.doorbell.stop()
        if supervisor._mailbox is not None:
            supervisor._mailbox.stop()
        supervisor.presence.release()
        supervisor.workers.close()
        supervisor.metrics.close()


def test_the_doorbell_rings_from_the_tick_that_first_reaches_the_database(
    database: DatabaseSettings,
) -> None:
    """The doorbell is made in the very tick whose check reached the database, not the
    next one: idle workers would otherwise wait a whole tick (up to a second) for the
    first messages after a start (the database's enqueue → start p99 went from 58 ms to
    930 ms in bench.db_bench when it was made before the check)."""
    settings = Settings(database=database, queue=DB_QUEUE, backend_workers=0)
    supervisor = Supervisor(settings, PoolOptions(pool_name="first", log_to_stderr=False))
    try:
        deadline = time.monotonic() + 20
        while not supervisor.link.ok and time.monotonic() < deadline:
            supervisor._cycle_once()
            time.sleep(0.1)
        assert supervisor.link.ok
        # The same tick that brought the link up made and started the doorbell.
        assert supervisor.doorbell is not None and supervisor.doorbell.is_alive()
    finally:
        if supervisor.doorbell is not None:
            supervisor.doorbell.stop()
        supervisor.presence.release()
        supervisor.workers.close()
        supervisor.metrics.close()
