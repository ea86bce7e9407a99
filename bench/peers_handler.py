"""tuitop's handler for ``python -m bench.peers`` (``--handlers bench.peers_handler``): the
topic ``bench.peers`` runs :func:`bench.peer_tasks.peer_jobs.run` on the payload's
``job`` (and its ``enqueued`` time, when it carries one), as every other pool does."""

from __future__ import annotations

from typing import Any

from bench.peer_tasks import peer_jobs
from tuitop.handlers import HandlerRegistry, Job

TOPIC = "bench.peers"


def run(payload: Any, job: Job) -> None:
    peer_jobs.run(payload["job"], payload.get("enqueued"))


def register(registry: HandlerRegistry) -> None:
    registry.register(TOPIC, run)
