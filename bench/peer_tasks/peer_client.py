"""The producer every pool is fed by, its own client library the same way for each.

``python -m bench.peer_tasks.peer_client POOL ACTION …``, run in the pool's own virtualenv
with the repository on ``PYTHONPATH``:

* ``stage --job J --count N``: the module's ``stage`` (or N ``enqueue`` calls);
* ``send --job J --count N``: N ``enqueue`` calls as fast as they go, no enqueue time
  (the warm-up);
* ``steady --job J --rate R --seconds S``: ``enqueue`` at R a second for S seconds, each
  carrying ``time.time()`` read just before its call.

Prints one JSON line: ``{"sent": N, "seconds": …, "behind": …}`` (``behind``: how late,
in seconds, the last steady send was against its schedule).
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from collections.abc import Callable
from typing import Any


def steady(
    enqueue: Callable[[str, float | None], None], job: str, rate: float, seconds: float
) -> dict[str, Any]:
    """Calls ``enqueue(job, time.time())`` ``rate`` times a second for ``seconds``."""
    total = int(rate * seconds)
    interval = 1.0 / rate
    begin = time.perf_counter()
    behind = 0.0
    for index in range(total):
        target = begin + index * interval
        while (delay := target - time.perf_counter()) > 0:
            time.sleep(delay)
        behind = max(behind, -delay)
        enqueue(job, time.time())
    return {"sent": total, "seconds": time.perf_counter() - begin, "behind": behind}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("pool")
    parser.add_argument("action", choices=("stage", "send", "steady"))
    parser.add_argument("--job", default="noop")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    module = importlib.import_module(f"bench.peer_tasks.{args.pool}_tasks")
    enqueue: Callable[[str, float | None], None] = module.enqueue
    begin = time.perf_counter()
    if args.action == "steady":
        report = steady(enqueue, args.job, args.rate, args.seconds)
    else:
        stage = getattr(module, "stage", None) if args.action == "stage" else None
        if stage is not None:
            stage(args.count, args.job)
        else:
            for _ in range(args.count):
                enqueue(args.job, None)
        report = {"sent": args.count, "seconds": time.perf_counter() - begin, "behind": 0.0}
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
