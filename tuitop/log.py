"""The ``worker_log`` format and the loggers of the parent and the workers.

Lines are Tuleap's: ``DATE_ISO8601 [PID] [level] message``, e.g.
``2026-11-27T10:00:00+00:00 [1234] [info] Message processed in 0.012 seconds [17/1000]``.
Each process appends its own lines to the file (O_APPEND keeps lines whole), so the PID
says who wrote it. The level in force can be changed while running (``LevelControl``),
and every line is scrubbed of the secrets in force before it is written.

Every process follows logrotate by itself: before each line it opens the file again if
the path names another file now or none (``create``, ``nocreate``), and O_APPEND writes
each line at the end of a file truncated in place (``copytruncate``), never past a hole.
:func:`reopen_log_files` lets go of a moved file at once rather than at the next line:
the pool calls it on SIGUSR1 (logrotate's ``postrotate``), each worker every heartbeat.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from tuitop.config import mask_secrets

LOGGER_NAME = "tuitop"
DEFAULT_LOG_FILE = "/var/log/tuleap/worker_log"
_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


class LevelSource(Protocol):
    """Anything holding the level in force as an int (a ``multiprocessing.Value``, say)."""

    value: int


class SettableLevel:
    """A plain level holder, for a process that has no shared one."""

    def __init__(self, level: int) -> None:
        self.value = level


class TuleapFormatter(logging.Formatter):
    """Formats records as Tuleap's worker_log lines, secrets masked."""

    def __init__(self, secrets: Callable[[], Sequence[str]] = tuple) -> None:
        super().__init__()
        self._secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="seconds")
        level = _LEVEL_NAMES.get(record.levelno, record.levelname.lower())
        text = record.getMessage()
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return mask_secrets(f"{stamp} [{record.process}] [{level}] {text}", self._secrets())


class LevelFilter(logging.Filter):
    """Lets through records at or above the level in force; errors always pass."""

    def __init__(self, level: LevelSource) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= min(self.level.value, logging.ERROR)


LOG_FILE_MODE = 0o640
"""A worker_log made by tuitop is readable by its owner and group only: at debug level it
holds recipients, messages and tracebacks."""


class PrivateWatchedFileHandler(logging.handlers.WatchedFileHandler):
    """A WatchedFileHandler that creates its file ``LOG_FILE_MODE`` (the first time and
    after logrotate moved it away), whatever the process's umask; a file already there
    keeps its mode (the admin's choice)."""

    def _open(self) -> Any:
        descriptor = os.open(
            self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_FILE_MODE
        )
        return open(descriptor, "a", encoding=self.encoding, errors=self.errors)


def setup_logging(
    *,
    log_file: str | None,
    to_stderr: bool,
    level: LevelSource,
    secrets: Callable[[], Sequence[str]] = tuple,
) -> logging.Logger:
    """Configures the ``tuitop`` logger of this process (idempotent: replaces handlers).

    A log file that cannot be opened is reported on stderr and skipped, never fatal: the
    pool runs on without its file rather than not at all.
    """
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = False
    sync_level(logger, level)
    formatter = TuleapFormatter(secrets)
    level_filter = LevelFilter(level)
    handlers: list[logging.Handler] = []
    if log_file:
        try:
            # Watched: after logrotate moves the file away, the next line opens a new one.
            handlers.append(PrivateWatchedFileHandler(log_file, encoding="utf-8"))
        except OSError as error:
            print(
                f"tuitop: cannot write the log file {log_file}: {error.strerror}", file=sys.stderr
            )
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(level_filter)
        logger.addHandler(handler)
    return logger


def reopen_log_files(logger: logging.Logger) -> None:
    """Has each log file of ``logger`` opened again now if logrotate moved it (created
    anew when nothing is there yet): the next lines go to the new file, and the moved
    one is let go (its disk space freed once it is compressed or removed). A file still
    in its place is kept open. Safe from any thread."""
    for handler in logger.handlers:
        if isinstance(handler, logging.handlers.WatchedFileHandler):
            with handler.lock or contextlib.nullcontext():
                try:
                    handler.reopenIfNeeded()
                except OSError:
                    handler.handleError(_REOPEN_RECORD)


_REOPEN_RECORD = logging.makeLogRecord({"msg": "reopening the log file"})


def sync_level(logger: logging.Logger, level: LevelSource) -> None:
    """Makes ``logger`` drop records below the level in force before it builds them.

    The handlers' LevelFilter reads the shared level on every record, so a change made by
    the supervisor applies at once; setting the logger's own level as well (when the shared
    one changed) spares a worker building records nobody will write, which costs more than
    the job itself for a no-op.
    """
    wanted = min(level.value, logging.ERROR)
    if logger.level != wanted:
        logger.setLevel(wanted)
