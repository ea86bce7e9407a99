"""Helpers of the worker's tests: one real worker in this process, on a real Redis."""

from __future__ import annotations

import logging
import os

from tuitop.config import RedisSettings, Settings
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.log import SettableLevel
from tuitop.message import Message
from tuitop.worker.loop import Worker
from tuitop.worker.options import WorkerOptions
from tuitop.worker.status import WorkerStatus


def make_worker(server: EmbeddedRedis) -> Worker:
    settings = Settings(redis=RedisSettings("127.0.0.1", server.port), backend_workers=1)
    options = WorkerOptions(
        slot_name="test/0",
        pool="test",
        slot=0,
        settings=settings,
        supervisor_pid=os.getpid(),
        block_timeout=0.2,
    )
    worker = Worker(options, WorkerStatus.create(), SettableLevel(logging.DEBUG))
    worker.connect()
    return worker


def take(worker: Worker, count: int) -> list[Message]:
    return worker.channel.take(worker.id, count).messages
