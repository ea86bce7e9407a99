"""Where the queue lives: Redis (:mod:`.redis`) or Tuleap's database (:mod:`.db`), behind
the protocols of :mod:`.base`. Each backend is imported only when used."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuitop.config import DB_QUEUE, DatabaseSettings, Settings, StoreSettings
from tuitop.lanes import LaneSet

if TYPE_CHECKING:
    from tuitop.backends.base import (
        PoolStore,
        QueueAdmin,
        RetryPolicy,
        StoreView,
        WorkerChannel,
    )


def worker_channel(
    settings: Settings,
    *,
    serves: tuple[str, ...],
    retry: RetryPolicy,
    client_name: str,
    socket_timeout: float,
    bell: Any = None,
) -> WorkerChannel:
    """A worker's conversation with the queue ``settings`` name, taking from the lanes
    ``serves`` (its own first). ``bell`` (the database's): the pool's doorbell to wait on."""
    if settings.queue == DB_QUEUE:
        from tuitop.backends.db import DbChannel

        return DbChannel(
            settings.database,
            lanes=settings.lanes,
            serves=serves,
            retry=retry,
            client_name=client_name,
            socket_timeout=socket_timeout,
            bell=bell,
        )
    from tuitop.backends.redis.channel import RedisChannel

    return RedisChannel(
        settings.redis,
        lanes=settings.lanes,
        serves=serves,
        retry=retry,
        client_name=client_name,
        socket_timeout=socket_timeout,
    )


def pool_store(
    store: StoreSettings, *, pool_name: str, retry: RetryPolicy, socket_timeout: float
) -> PoolStore:
    """What a pool does on the server ``store`` names (nothing is sent yet)."""
    if isinstance(store, DatabaseSettings):
        from tuitop.backends.db import DbPoolStore

        return DbPoolStore(store, pool_name=pool_name, retry=retry, socket_timeout=socket_timeout)
    from tuitop.backends.redis.pool import RedisPoolStore

    return RedisPoolStore(store, pool_name=pool_name, retry=retry, socket_timeout=socket_timeout)


def open_queue(store: StoreSettings, client_name: str) -> QueueAdmin:
    """The queue ``store`` names, as the CLI and the producers use it (nothing sent yet,
    but the database's tables made)."""
    if isinstance(store, DatabaseSettings):
        from tuitop.backends.db.view import DbAdmin

        return DbAdmin(store, client_name).prepare()
    from tuitop.backends.redis.connection import connect
    from tuitop.backends.redis.view import RedisAdmin

    return RedisAdmin(store, connect(store, client_name=client_name))


def open_view(
    store: StoreSettings,
    lanes: LaneSet,
    client_name: str,
    *,
    beside: PoolStore | None = None,
) -> StoreView:
    """What a view reads from ``store`` (``lanes``: the lane of each topic, for the
    database, where a lane is no place of its own). ``beside``: the pool's own store,
    whose connection a view of the same database shares (one connection fewer on the
    forge's database; Redis' views have their own)."""
    if isinstance(store, DatabaseSettings):
        from tuitop.backends.db.pool import DbPoolStore
        from tuitop.backends.db.view import DbView

        shared = beside.session if isinstance(beside, DbPoolStore) else None
        if shared is not None and shared.settings != store:
            shared = None
        return DbView(store, lanes, client_name, shared)
    from tuitop.backends.redis.view import RedisView

    return RedisView(store, client_name)
