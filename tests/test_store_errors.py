"""Store errors are tuitop's own (tuitop/backends/errors.py): each backend turns its
driver's error into one at its edge, on both backends, with real servers — the pool,
the workers, the views and the CLI catch those, never redis' or pymysql's."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tuitop.backends import open_queue, open_view, pool_store, worker_channel
from tuitop.backends.base import RetryPolicy
from tuitop.backends.errors import (
    CredentialsRefused,
    StoreError,
    StoreUnavailable,
)
from tuitop.beats import WorkerBeat
from tuitop.config import (
    DB_QUEUE,
    DatabaseSettings,
    RedisSettings,
    Secret,
    Settings,
    StoreSettings,
)
from tuitop.embedded.redisserver import EmbeddedRedis, free_port
from tuitop.lanes import DEFAULT_LANE, LaneSet

PASSWORD = "a-password-that-must-never-be-printed-0123456789"


@pytest.fixture(params=["redis", "database"])
def settings(request: pytest.FixtureRequest) -> StoreSettings:
    """A store that answers: a private Redis with a password, or a fresh database."""
    if request.param == "redis":
        server: EmbeddedRedis = request.getfixturevalue("redis_server_factory")(password=PASSWORD)
        return RedisSettings("127.0.0.1", server.port, Secret(PASSWORD))
    database: DatabaseSettings = request.getfixturevalue("database")
    return database


def test_a_store_that_answers_serves(settings: StoreSettings) -> None:
    queue = open_queue(settings, "tuitop:test")
    try:
        assert queue.dead_letter_count() == 0
    finally:
        queue.close()


def test_a_store_that_does_not_answer_raises_store_unavailable(settings: StoreSettings) -> None:
    away = dataclasses.replace(settings, port=free_port())
    store = pool_store(away, pool_name="p", retry=RetryPolicy(), socket_timeout=2.0)
    with pytest.raises(StoreUnavailable) as raised:
        store.ping()
    assert not isinstance(raised.value, CredentialsRefused)
    assert str(away.port) in str(raised.value)  # where: the operator can act on it
    assert type(raised.value.__cause__).__module__.split(".")[0] in ("redis", "pymysql")


def test_a_refused_password_is_credentials_refused_and_never_printed(
    settings: StoreSettings,
) -> None:
    wrong = dataclasses.replace(settings, password=Secret(PASSWORD[::-1]))
    view = open_view(wrong, LaneSet(), "tuitop:test")
    with pytest.raises(CredentialsRefused) as raised:
        view.snapshot(0.0)
    said = str(raised.value)
    assert "password" in said
    assert PASSWORD[::-1] not in said and PASSWORD not in said


def test_a_refused_statement_leaves_the_database_link_up(database: DatabaseSettings) -> None:
    """The database refuses one statement (a row lock waited for past the worker's 2 s):
    StoreError, not StoreUnavailable — the caller logs it and goes on, its link up."""
    worker_id = "p/0#1"
    open_queue(database, "tuitop:test").close()  # tuitop's tables made, as a CLI makes them
    channel = worker_channel(
        Settings(database=database, queue=DB_QUEUE),
        serves=(DEFAULT_LANE,),
        retry=RetryPolicy(),
        client_name="tuitop:test",
        socket_timeout=10.0,
    )
    channel.start(worker_id)
    beat = WorkerBeat(host="h", pid=1, pool="p", slot=0, lane=DEFAULT_LANE)
    assert channel.beat(worker_id, beat, ttl=10.0)
    import pymysql  # the test's own hand on the server: another client holding the row

    holder = pymysql.connect(
        host=database.host,
        port=database.port,
        user=database.user,
        password=database.password.reveal(),
        database=database.name,
    )
    try:
        with holder.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("SELECT * FROM tuitop_workers WHERE id = %s FOR UPDATE", (worker_id,))
            with pytest.raises(StoreError) as raised:
                channel.beat(worker_id, dataclasses.replace(beat, state="busy"), ttl=10.0)
    finally:
        holder.close()
    assert not isinstance(raised.value, StoreUnavailable)
    assert "1205" in str(raised.value) or "lock" in str(raised.value).lower()
    channel.close()


def test_a_worker_whose_password_is_refused_exits_3_on_either_backend(
    settings: StoreSettings, tmp_path: Path
) -> None:
    """The pool says "refused the password" (and which setting) from a worker's exit code
    (WorkerExit.STORE_AUTH): a real worker process, started as the pool starts it (the
    forkserver, its preload), given a wrong password."""
    import logging
    import os

    from tuitop.config import REDIS_QUEUE
    from tuitop.pool.workers import new_context
    from tuitop.worker.loop import worker_main
    from tuitop.worker.options import WorkerOptions
    from tuitop.worker.status import WorkerExit, WorkerStatus

    wrong = dataclasses.replace(settings, password=Secret(PASSWORD[::-1]))
    if isinstance(wrong, RedisSettings):
        whole = Settings(redis=wrong, queue=REDIS_QUEUE)
    else:
        assert isinstance(wrong, DatabaseSettings)
        whole = Settings(database=wrong, queue=DB_QUEUE)
    context = new_context()
    options = WorkerOptions(
        slot_name="p/0",
        pool="p",
        slot=0,
        settings=whole,
        supervisor_pid=os.getpid(),
        log_file=str(tmp_path / "worker.log"),
    )
    level = context.RawValue("i", logging.INFO)  # type: ignore[attr-defined]
    process = context.Process(  # type: ignore[attr-defined]
        target=worker_main, args=(options, WorkerStatus.create(context), level, None)
    )
    process.start()
    process.join(30)
    assert process.exitcode == WorkerExit.STORE_AUTH == 3
    log = (tmp_path / "worker.log").read_text()
    assert "refused" in log and PASSWORD[::-1] not in log
