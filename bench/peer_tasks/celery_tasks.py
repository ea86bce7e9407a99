"""Celery's side: one task on a Redis broker, no result backend, Celery's defaults
otherwise (early ack, prefetch multiplier 4, the ``celery`` queue)."""

from __future__ import annotations

from celery import Celery

from bench.peer_tasks import peer_jobs

app = Celery(
    "celery_tasks",
    broker=f"redis://{peer_jobs.HOST}:{peer_jobs.port()}/{peer_jobs.broker_db()}",
)
# Only silences the deprecation warning about the default it keeps.
app.conf.broker_connection_retry_on_startup = True


@app.task
def run(job: str, enqueued: float | None = None) -> None:
    peer_jobs.run(job, enqueued)


def enqueue(job: str, enqueued: float | None) -> None:
    run.apply_async((job, enqueued))
