"""Many values onto a Redis list fast: ``LPUSH`` of up to ``chunk`` values a command,
``per_trip`` commands a pipeline (one round trip). Imports redis-py only."""

from __future__ import annotations

from collections.abc import Iterable

import redis


def lpush_chunked(
    client: redis.Redis,
    key: str,
    values: Iterable[bytes],
    *,
    chunk: int = 1000,
    per_trip: int = 10,
) -> int:
    """LPUSHes ``values`` in their order (the first is the first an RPOP takes); returns
    how many."""
    pipe = client.pipeline(transaction=False)
    batch: list[bytes] = []
    queued = 0
    count = 0
    for value in values:
        batch.append(value)
        if len(batch) == chunk:
            pipe.lpush(key, *batch)
            count += len(batch)
            batch = []
            queued += 1
            if queued == per_trip:
                pipe.execute()
                queued = 0
    if batch:
        pipe.lpush(key, *batch)
        count += len(batch)
    pipe.execute()
    return count
