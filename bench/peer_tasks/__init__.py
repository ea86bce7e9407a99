"""What each pool of ``python -m bench.peers`` runs, and how each is fed.

Each peer's module (``huey_tasks``, ``celery_tasks``, ``dramatiq_tasks``, ``arq_tasks``,
``rq_tasks``) runs in that peer's own virtualenv with the repository on ``PYTHONPATH``;
it imports its library, redis-py and this package, never tuitop (whose dependencies that
virtualenv does not have). ``tuitop_tasks`` and ``bare_tasks`` are the producers' side
of tuitop and of the bare loop; they run in tuitop's own virtualenv.

Every ``*_tasks`` module gives :mod:`peer_client` the same two functions:

* ``stage(count, job)``: puts ``count`` jobs in the queue with the pool's own client, on
  the Redis database ``BENCH_REDIS_DB`` names (the benchmark stages on database 1, then
  MOVEs the keys into database 0, the pool's, at once);
* ``enqueue(job, enqueued)``: one job carrying its enqueue time, on database
  ``BENCH_REDIS_DB``.

and every job runs :func:`bench.peer_tasks.peer_jobs.run`.
"""
