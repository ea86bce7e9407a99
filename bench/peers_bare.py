"""The barest reliable pool, the baseline of ``python -m bench.peers``.

``python -m bench.peers_bare --port P --workers N`` forks N worker processes; each loops:

1. one Lua script: ``RPOP`` of up to 32 messages from the queue, ``LPUSH`` of them onto the
   worker's own processing list (a take that survives the worker's death: the messages
   are in Redis until acked);
2. when that took nothing, ``BLMOVE`` of one message from the queue to the processing list,
   blocking up to 60 s;
3. the job of each message (:func:`bench.peer_tasks.peer_jobs.run`);
4. one ``DEL`` of the processing list (the ack of the whole batch).

That is the least a reliable take and ack can cost: one round trip to take a batch, one
to ack it. Nothing else (no heartbeat, no stats, no recovery of a dead worker's list: the
benchmark kills no worker). SIGTERM ends the workers and the parent; the parent exits 1
when a worker dies on its own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.connection
import signal
import sys
from types import FrameType

import redis

from bench.peer_tasks import peer_jobs
from bench.peer_tasks.bare_tasks import QUEUE, processing_list

BATCH = 32
BLOCK_SECONDS = 60
TAKE = """
local items = redis.call('RPOP', KEYS[1], ARGV[1])
if items then
    redis.call('LPUSH', KEYS[2], unpack(items))
end
return items
"""


def work(index: int, port: int) -> None:
    """Worker ``index``'s loop, forever."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    client = redis.Redis(host=peer_jobs.HOST, port=port, socket_timeout=BLOCK_SECONDS + 10)
    take = client.register_script(TAKE)
    processing = processing_list(index)
    while True:
        items = take(keys=[QUEUE, processing], args=[BATCH])
        if not items:
            item = client.blmove(QUEUE, processing, BLOCK_SECONDS, "RIGHT", "LEFT")
            if item is None:
                continue
            items = [item]
        for raw in items:
            message = json.loads(raw)
            peer_jobs.run(message["job"], message.get("enqueued"))
        client.delete(processing)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=work, args=(index, args.port), name=f"bare-{index}")
        for index in range(args.workers)
    ]
    status = 0
    try:
        for worker in workers:
            worker.start()
        multiprocessing.connection.wait([worker.sentinel for worker in workers])
        status = 1
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        for worker in workers:
            worker.join(10)
    sys.exit(status)


if __name__ == "__main__":
    main()
