"""The ``tuitop`` command: argument parsing and the sub-commands, nothing else."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import socket
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, NoReturn

from tuitop import __version__, control
from tuitop.backends import open_queue, open_view
from tuitop.backends.base import MAX_REQUEUES, TULEAP_HOLD_LIMIT, QueueAdmin, RetryPolicy
from tuitop.backends.errors import StoreError
from tuitop.check import OLDEST_CRITICAL, OLDEST_WARNING
from tuitop.config import (
    DEFAULT_CONFIG_FILES,
    ConfigError,
    DatabaseSettings,
    LoadedConfig,
    Settings,
    load_config,
)
from tuitop.lanes import TULEAP_QUEUE
from tuitop.log import DEFAULT_LOG_FILE
from tuitop.mail import DEFAULT_SENDMAIL
from tuitop.message import encode
from tuitop.tasks import (
    TULEAP_CLI,
    TULEAP_SOURCE_ROOT,
    TULEAP_TASK_ARGV,
    TaskCommand,
    default_task_command,
)

if TYPE_CHECKING:
    from tuitop.check import Report
    from tuitop.pool.options import MetricsOptions
    from tuitop.tui.source import SnapshotSource

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG_ERROR = 2


class CommandParser(argparse.ArgumentParser):
    """A sub-command's parser, whose usage errors exit with its default
    ``usage_exit_code``: 2, as argparse does, but 3 (UNKNOWN) for a monitoring plugin, to
    which 2 means CRITICAL."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        code = self.get_default("usage_exit_code") or EXIT_CONFIG_ERROR
        self.exit(code, f"{self.prog}: error: {message}\n")


def _add_config_option(parser: argparse.ArgumentParser, *, top_level: bool = False) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        action="append",
        # A sub-command's default must not erase a --config given before the sub-command.
        default=None if top_level else argparse.SUPPRESS,
        help="a PHP config file, read in the order given (repeat for several; default: "
        + " then ".join(DEFAULT_CONFIG_FILES)
        + ", skipping a missing one)",
    )


def _add_interval_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--interval",
        type=float,
        default=0.5,
        help="seconds between two refreshes of the UI (default: %(default)s)",
    )


POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
"""A host name's characters: no ``/`` or ``#`` (worker ids are ``pool/slot#pid``), no
``:`` (``tuitop:pool:<name>:owner`` is the name's lease); at most 200 of them, so that a
worker's id (``/slot#pid`` more) fits the database's 255-character columns."""


def _pool_name(text: str) -> str:
    if not POOL_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a pool name is 1 to 200 letters, digits, '.', '_' or '-' (a host name)"
        )
    return text


def _add_pool_options(parser: argparse.ArgumentParser) -> None:
    pool = parser.add_argument_group("pool")
    pool.add_argument("--no-ui", action="store_true", help="run headless, as a daemon")
    # The pipe from the UI that runs this pool (tuitop.poolprocess), not for people.
    pool.add_argument("--control-stdin", action="store_true", help=argparse.SUPPRESS)
    _add_interval_option(pool)
    pool.add_argument(
        "--log-file",
        default=DEFAULT_LOG_FILE,
        help="Tuleap's worker_log (default: %(default)s; '' for none)",
    )
    pool.add_argument(
        "--pool-name",
        type=_pool_name,
        help="unique name of this pool (default: the host name)",
    )
    pool.add_argument(
        "--max-messages",
        type=int,
        default=1000,
        help="a worker is replaced after this many messages (default: %(default)s)",
    )
    pool.add_argument(
        "--job-timeout",
        type=float,
        default=900.0,
        help="seconds a job may run before its worker is killed (default: %(default)s)",
    )
    pool.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds a warm shutdown waits for running jobs (default: %(default)s)",
    )
    pool.add_argument(
        "--retry-delay",
        type=float,
        default=5.0,
        help="first retry delay in seconds, doubled each try up to 8x (default: %(default)s)",
    )
    pool.add_argument(
        "--db-poll",
        metavar="S",
        type=float,
        default=0.1,
        help="seconds between two looks of the pool at Tuleap's database queue while a "
        "worker is idle (one index lookup for all its workers; default: %(default)s)",
    )
    pool.add_argument(
        "--tuleap-list-timeout",
        metavar="S",
        type=float,
        default=TULEAP_HOLD_LIMIT,
        help="a processing list of Tuleap's own workers unchanged this long, with no pid "
        "file on this host saying its worker runs, is recovered (default: %(default)g: "
        "Tuleap's 15-minute task limit and a minute)",
    )
    pool.add_argument(
        "--handlers",
        metavar="MODULE",
        action="append",
        default=[],
        help="a module defining register(registry) that adds handlers for more topics",
    )
    pool.add_argument(
        "--sendmail", default=DEFAULT_SENDMAIL, help="sendmail binary (default: %(default)s)"
    )
    pool.add_argument(
        "--task-command",
        metavar="CMD",
        help="the command that runs one message read on its stdin, for every message no "
        "built-in handler takes (split as a shell would; run without a shell; '' for none). "
        f"Default: '{shlex.join(TULEAP_TASK_ARGV)}' where {TULEAP_CLI} exists, else none",
    )
    pool.add_argument(
        "--task-dir",
        metavar="DIR",
        help=f"the directory the task command runs in (default: {TULEAP_SOURCE_ROOT} where "
        "it exists, else the directory tuitop starts in)",
    )
    _add_metrics_options(pool)


def _add_metrics_options(pool: argparse._ArgumentGroup) -> None:
    pool.add_argument(
        "--metrics-port",
        metavar="PORT",
        type=_port,
        help="serve Prometheus metrics on http://ADDRESS:PORT/metrics (default: none)",
    )
    pool.add_argument(
        "--metrics-address",
        metavar="ADDRESS",
        default="127.0.0.1",
        help="the address /metrics listens on (default: %(default)s, this host only; "
        "0.0.0.0 or :: for every interface)",
    )


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"{text!r}: a port is a number from 1 to 65535")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuitop",
        description="Tuleap-compatible backend workers with a live terminal UI. Without a "
        "command, runs the pool with the UI in front of it (--no-ui: headless, a daemon).",
    )
    parser.add_argument("--version", action="version", version=f"tuitop {__version__}")
    _add_config_option(parser, top_level=True)
    _add_pool_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)

    config = commands.add_parser(
        "config",
        help="print the effective settings read from the config files",
        description="Read the config files as Tuleap does and print the effective settings "
        "(passwords masked). Exit 0 when they are valid, 2 with the error otherwise.",
    )
    _add_config_option(config)
    config.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: 'variables' (as PHP has them) and 'settings'",
    )

    enqueue = commands.add_parser(
        "enqueue",
        help="push one message onto the queue (like 'tuleap worker:enqueue')",
        description="Push a message for TOPIC with the JSON PAYLOAD onto the queue.",
    )
    _add_config_option(enqueue)
    enqueue.add_argument("topic")
    enqueue.add_argument("payload", help="the payload, as JSON")

    notify = commands.add_parser(
        "notify",
        help="send a notification mail, queued or inline as $sys_async_emails says",
    )
    _add_config_option(notify)
    notify.add_argument("--project", type=int, required=True, help="project id")
    notify.add_argument("--artifact", type=int, required=True, help="artifact id")
    notify.add_argument("--changeset", type=int, required=True, help="changeset id")
    notify.add_argument("--to", action="append", required=True, help="recipient (repeatable)")
    notify.add_argument("--subject", required=True)
    notify.add_argument("--text", required=True, help="plain-text body")
    notify.add_argument("--html", help="HTML body (optional)")
    notify.add_argument("--sendmail", default=DEFAULT_SENDMAIL, help="for inline sending")

    demo = commands.add_parser(
        "demo",
        help="run everything on an embedded default: private Redis, local SMTP, producer",
        description="Start a private Redis and a local SMTP server, write a config for them, "
        "run the pool and a producer of notifications. Ctrl-C stops it all.",
    )
    demo.add_argument(
        "--no-ui", action="store_true", default=argparse.SUPPRESS, help="run headless"
    )
    _add_interval_option(demo)
    demo.add_argument("--rate", type=float, default=20.0, help="notifications per second")
    demo.add_argument("--workers", type=int, default=2, help="workers in the demo's config")
    demo.add_argument(
        "--queue",
        choices=["redis", "db"],
        default="redis",
        help="the queue: a private Redis (default), or Tuleap's database queue on a private "
        "MariaDB (Debian's mariadb-server binaries)",
    )

    top = commands.add_parser(
        "top",
        help="watch the pools sharing a queue, live (runs no worker)",
        description="Show the queue, the workers of every pool and the latency, live, "
        "from the queue the config files name (a Redis, or Tuleap's database).",
    )
    _add_config_option(top)
    _add_interval_option(top)
    top.add_argument(
        "--log-file",
        default=DEFAULT_LOG_FILE,
        help="worker_log to tail in the log panel (default: %(default)s; '' for none)",
    )
    top.add_argument(
        "--read-only",
        action="store_true",
        help="refuse every key that would change something: scale, pause, reload or stop "
        "a pool, replay or purge dead letters (as k9s --readonly)",
    )
    top.add_argument(
        "--once",
        action="store_true",
        help="print one snapshot (a short summary) and exit: 0, or 1 when the store does "
        "not answer",
    )
    top.add_argument(
        "--json",
        action="store_true",
        help="with --once: print it as one JSON object (queue, lanes, pools, workers, "
        "latency, topics) for scripts",
    )

    adopt = commands.add_parser(
        "adopt-tuleap",
        help="re-queue what Tuleap's own workers left in their processing lists",
        description="After Tuleap's workers are stopped (tuleap-workers.service), re-queue "
        "what they held (app_user_events-processing-N) as Tuleap's worker N would at its "
        "next start: one more try, retried after the back-off, dead-lettered past the "
        "last. Refused for a worker whose pid file says it still runs on this host; a "
        "Tuleap worker on another host cannot be seen from here: stop them all first.",
    )
    _add_config_option(adopt)
    adopt.add_argument("--dry-run", action="store_true", help="only say what Tuleap's workers hold")

    hand = commands.add_parser(
        "hand-back",
        help="give Tuleap's list what only tuitop reads, once no pool runs",
        description="When going back to Tuleap's own workers, with every tuitop pool "
        "stopped: move into app_user_events what only tuitop reads — what its workers "
        "held (with one more try), its lanes' lists, and the retries waiting their time. "
        "Refused while a pool runs on this queue.",
    )
    _add_config_option(hand)

    check = commands.add_parser(
        "check",
        help="Tuleap's SYSTEM_CHECK as a monitoring plugin (exit 0 OK, 1 WARNING, 2 "
        "CRITICAL, 3 UNKNOWN)",
        description="Look at the queue, the pools and the Redis server once; print one "
        "status line with perfdata after '|', then one line per finding. Exit 0 OK, "
        "1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios, Icinga, a systemd timer).",
    )
    check.set_defaults(usage_exit_code=3)
    _add_config_option(check)
    check.add_argument(
        "-w",
        "--warning",
        metavar="S",
        type=float,
        default=OLDEST_WARNING,
        help="WARNING when a lane's oldest waiting message is older (default: %(default)g, "
        "Tuleap's; a lane named after its latency target, latency_15m, warns past it)",
    )
    check.add_argument(
        "-c",
        "--critical",
        metavar="S",
        type=float,
        default=OLDEST_CRITICAL,
        help="CRITICAL when a lane's oldest waiting message is older (default: %(default)g)",
    )
    check.add_argument(
        "-t",
        "--timeout",
        metavar="S",
        type=float,
        default=10.0,
        help="UNKNOWN when the check takes longer (default: %(default)g)",
    )
    check.add_argument(
        "--no-redis-settings",
        action="store_true",
        help="do not look at the Redis server's version, appendonly and password (where "
        "INFO and CONFIG are refused to tuitop's user)",
    )
    check.add_argument("--json", action="store_true", help="print one JSON object instead")

    ctl = commands.add_parser(
        "ctl",
        help="scale, pause, resume, reload or stop a pool, on this host or another",
        description="Send a command to pools through the queue's store (Redis, or the "
        "database) and print each pool's reply. Actions: scale +N|-N (workers for the "
        "session, as + and - in the UI), workers N, pause [LANE], resume [LANE] (no worker "
        "takes messages, or none of LANE; running jobs finish), reload (the config files), "
        "stop (warm). Exit 0 when every pool did it, 1 otherwise.",
    )
    _add_config_option(ctl)
    ctl.add_argument("action", choices=control.ACTIONS)
    ctl.add_argument(
        "argument", nargs="?", help="scale: +N or -N; workers: N; pause, resume: a lane"
    )
    target = ctl.add_mutually_exclusive_group()
    target.add_argument(
        "--pool",
        action="append",
        type=_pool_name,
        help="the pool to command (repeatable; default: the only live pool)",
    )
    target.add_argument("--all", action="store_true", help="every live pool")
    ctl.add_argument(
        "--timeout",
        metavar="S",
        type=float,
        default=5.0,
        help="how long to wait for each pool's reply (default: %(default)g; a pool reads "
        "its commands every second)",
    )

    unit = commands.add_parser(
        "install-unit",
        help="write systemd's unit for the pool (then run the systemctl it prints)",
        description="Write tuitop.service for systemd, running this tuitop headless with "
        "the --config files given (Type=notify, watchdog, warm stop), to "
        "/etc/systemd/system, or for the user's own manager with --user. Prints the "
        "systemctl commands to run next; runs none.",
    )
    _add_config_option(unit)
    unit.add_argument(
        "--user", action="store_true", help="a unit of your user's systemd (~/.config/systemd/user)"
    )
    unit.add_argument("--dry-run", action="store_true", help="print the unit, write nothing")
    unit.add_argument("--force", action="store_true", help="replace a unit that differs")
    unit.add_argument("--unit-dir", metavar="DIR", help="write it there instead")
    unit.add_argument(
        "--tuleap-cli",
        metavar="PATH",
        help="Tuleap's CLI the unit waits for and runs 'sanity-check' with before it starts "
        "(default: /usr/bin/tuleap where it exists; else the unit is for a host without "
        "Tuleap)",
    )

    dead = commands.add_parser("dead-letters", help="list, show, replay or purge dead letters")
    _add_config_option(dead)
    dead.add_argument(
        "action", choices=["list", "show", "replay", "purge"], nargs="?", default="list"
    )
    dead.add_argument("index", nargs="?", type=int, help="which one (0 = newest), for show/replay")
    dead.add_argument("--all", action="store_true", help="replay every dead letter")
    return parser


def read_config(paths: Sequence[str] | None, *, required: Sequence[str] = ()) -> LoadedConfig:
    """Loads the files named on the command line, or the defaults: a missing default is
    skipped, unless it is in ``required`` (a reload: a default file that was there at start
    and is gone now is being replaced, not dropped)."""
    if paths:
        return load_config(paths)
    present = [p for p in DEFAULT_CONFIG_FILES if p in required or os.path.exists(p)]
    return load_config(present)


def _load_or_exit(paths: Sequence[str] | None) -> LoadedConfig | int:
    """The config, its warnings printed on stderr; or the exit code after the error."""
    try:
        loaded = read_config(paths)
    except ConfigError as error:
        print(f"tuitop: config error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    for diagnostic in loaded.diagnostics:
        print(diagnostic, file=sys.stderr)
    for warning in loaded.settings.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return loaded


def _settings_or_exit(paths: Sequence[str] | None) -> Settings | int:
    loaded = _load_or_exit(paths)
    return loaded if isinstance(loaded, int) else loaded.settings


def _print_settings(loaded: LoadedConfig) -> None:
    settings = loaded.settings
    redis_settings = settings.redis
    password = "password set" if redis_settings.sends_auth else "no password"
    database = settings.database
    rows = [
        ("files", ", ".join(settings.files) or "(none found: built-in defaults)"),
        ("queue", f"{settings.queue} ({settings.queue_reason})"),
        (
            "redis",
            f"{redis_settings.address} ({password})"
            if redis_settings.configured
            else redis_settings.address,
        ),
        (
            "database",
            f"{database.address} ({'password set' if database.password else 'no password'}"
            f"{', TLS' if database.tls else ''})"
            if database.configured
            else database.address,
        ),
        ("backend workers", str(settings.backend_workers)),
        ("async emails", str(settings.async_scope)),
        ("log level", str(settings.log_level)),
        ("lanes", str(settings.lanes)),
        ("timeout retries", str(settings.timeout_retries)),
        ("mail", settings.mail.describe()),
        ("noreply", settings.mail.noreply or "(not set)"),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def command_config(args: argparse.Namespace) -> int:
    loaded = _load_or_exit(args.config)
    if isinstance(loaded, int):
        return loaded
    if args.json:
        document = {"variables": loaded.variables_json(), "settings": loaded.settings.to_json()}
        print(json.dumps(document, indent=2, allow_nan=False))
    else:
        _print_settings(loaded)
    return EXIT_OK


NOT_CONFIGURED = "Redis is not configured ($redis_server is empty), nor is a database"


def _with_queue(args: argparse.Namespace, action: Callable[[QueueAdmin], int]) -> int:
    """Runs ``action`` on the queue the config files name (a Redis, or Tuleap's database);
    a config or server problem is said on stderr (password masked) and becomes the exit
    code."""
    settings = _settings_or_exit(args.config)
    if isinstance(settings, int):
        return settings
    return _on_queue(settings, action)


def _on_queue(settings: Settings, action: Callable[[QueueAdmin], int]) -> int:
    """:func:`_with_queue` for settings already read."""
    store = settings.store
    if not store.configured:
        print(f"tuitop: {NOT_CONFIGURED}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    try:
        queue = open_queue(store, "tuitop:cli")
        try:
            return action(queue)
        finally:
            queue.close()
    except StoreError as error:
        print(f"tuitop: {error!s}", file=sys.stderr)
        return EXIT_FAILURE


def command_enqueue(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except (ValueError, RecursionError) as error:
        why = "nested too deep" if isinstance(error, RecursionError) else str(error)
        print(f"tuitop: the payload is not JSON tuitop can send: {why}", file=sys.stderr)
        return EXIT_CONFIG_ERROR

    def push(queue: QueueAdmin) -> int:
        queue.push(encode(args.topic, payload))
        print(f"queued 1 message on {args.topic}")
        return EXIT_OK

    return _with_queue(args, push)


def command_notify(args: argparse.Namespace) -> int:
    from tuitop.notification import Mail, Notification
    from tuitop.notify import NotificationError, Notifier

    settings = _settings_or_exit(args.config)
    if isinstance(settings, int):
        return settings
    notification = Notification(
        project_id=args.project,
        artifact_id=args.artifact,
        changeset_id=args.changeset,
        mails=(Mail(tuple(args.to), args.subject, args.text, args.html),),
    )
    notifier = Notifier(settings, sendmail=args.sendmail)
    try:
        how = notifier.notify(notification)
    except NotificationError as error:
        print(f"tuitop: the notification could not be sent: {error}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        notifier.close()
    print(f"notification {how} ({notification.describe()}, project {args.project})")
    return EXIT_OK


def command_dead_letters(args: argparse.Namespace) -> int:
    settings = _settings_or_exit(args.config)
    if isinstance(settings, int):
        return settings
    return _on_queue(settings, lambda queue: _dead_letters(queue, args, settings.mask))


def _dead_letters(queue: QueueAdmin, args: argparse.Namespace, mask: Callable[[str], str]) -> int:
    """``mask``: the passwords in force masked, as the log masks them (a message, a
    reason or a traceback may hold one)."""
    if args.action == "purge":
        print(f"purged {queue.purge_dead_letters()} dead letter(s)")
        return EXIT_OK
    if args.action == "replay" and args.all:
        print(f"replayed {queue.replay_all()} dead letter(s)")
        return EXIT_OK
    if args.action in ("show", "replay"):
        if args.index is None:
            print(f"tuitop: dead-letters {args.action} needs an INDEX", file=sys.stderr)
            return EXIT_CONFIG_ERROR
        letters = queue.dead_letters(args.index, 1)
        if not letters:
            print(f"tuitop: no dead letter #{args.index}", file=sys.stderr)
            return EXIT_FAILURE
        letter = letters[0]
        if args.action == "replay":
            replayed = queue.replay(letter)
            print("replayed 1 dead letter" if replayed else "it was already gone")
            return EXIT_OK
        print(f"reason:  {mask(letter.reason)}\ntopic:   {letter.topic}")
        print(f"worker:  {letter.worker}")
        print(f"at:      {datetime.fromtimestamp(letter.at).isoformat(timespec='seconds')}")
        message = letter.message.decode("utf-8", "replace")
        print(f"tries:   {letter.tries}\nmessage: {mask(message)}")
        if letter.traceback:
            print(mask(letter.traceback))
        return EXIT_OK
    letters = queue.dead_letters(0, 100)
    for index, letter in enumerate(letters):
        stamp = datetime.fromtimestamp(letter.at).isoformat(timespec="seconds")
        print(f"{index:>4}  {stamp}  {letter.topic or '-':<28} {mask(letter.reason)}")
    print(f"{len(letters)} dead letter(s) shown")
    return EXIT_OK


def command_check(args: argparse.Namespace) -> int:
    from tuitop.check import CheckTimeout, Limits, Report, Status, run_check, time_limit

    def unknown(text: str) -> int:
        report = Report()
        report.add(Status.UNKNOWN, "check", text)
        _print_report(report, args.json)
        return int(Status.UNKNOWN)

    # A threshold that is no number (inf, nan) cannot be written as perfdata, nor in JSON.
    if not (0 < args.warning < args.critical and math.isfinite(args.critical)):
        return unknown("--warning must be above 0 and below --critical (a number of seconds)")
    if not 0 < args.timeout <= 3600:
        return unknown("--timeout must be above 0 and at most 3600 seconds")
    try:
        loaded = read_config(args.config)
    except ConfigError as error:
        return unknown(f"config error: {error}")
    limits = Limits(args.warning, args.critical, redis_settings=not args.no_redis_settings)
    try:
        with time_limit(args.timeout):
            report = run_check(loaded.settings, limits)
    except CheckTimeout:
        return unknown(f"no answer within {args.timeout:g} s")
    _print_report(report, args.json)
    return int(report.status)


def _print_report(report: Report, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.to_json(), indent=2, allow_nan=False))
    else:
        print(report.render())


def command_ctl(args: argparse.Namespace) -> int:
    try:
        command = _ctl_command(args.action, args.argument)
    except control.CommandError as error:
        print(f"tuitop: ctl {args.action}: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if not 0 < args.timeout <= 600:
        print("tuitop: --timeout must be above 0 and at most 600 seconds", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    settings = _settings_or_exit(args.config)
    if isinstance(settings, int):
        return settings
    store = settings.store
    if not store.configured:
        print(f"tuitop: {NOT_CONFIGURED}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    # The live pools, each by the run it is (its heartbeat's instance): a command names
    # it, so that a pool started later under the same name does not obey it.
    try:
        view = open_view(store, settings.lanes, "tuitop:ctl")
        try:
            live = {p.name: p.instance for p in view.snapshot(time.time()).pools if not p.stopping}
        finally:
            view.close()
    except StoreError as error:
        print(f"tuitop: {error!s}", file=sys.stderr)
        return EXIT_FAILURE
    targets = args.pool
    if targets:
        gone = [pool for pool in targets if pool not in live]
        if gone:
            print(f"tuitop: no live pool named {', '.join(gone)}: nothing sent", file=sys.stderr)
            return EXIT_FAILURE
    else:
        if not live:
            print("tuitop: no live pool to command", file=sys.stderr)
            return EXIT_FAILURE
        if len(live) > 1 and not args.all:
            print(
                f"tuitop: {len(live)} pools run ({', '.join(live)}): name one with --pool, "
                "or --all",
                file=sys.stderr,
            )
            return EXIT_CONFIG_ERROR
        targets = list(live)

    def send_all(queue: QueueAdmin) -> int:
        status = EXIT_OK
        for pool in targets:
            # A command of its own for each pool: a reply answers one id.
            each = control.new_command(
                command.action, command.value, command.lane, "tuitop ctl", to=live[pool]
            )
            reply = control.send(queue, pool, each, args.timeout)
            if isinstance(reply, control.NoReply):
                print(f"{pool}: {reply.describe()}")
                status = EXIT_FAILURE
                continue
            print(f"{pool}: {reply.said if reply.ok else 'refused: ' + reply.said}")
            if not reply.ok:
                status = EXIT_FAILURE
        return status

    return _on_queue(settings, send_all)


def _ctl_command(action: str, argument: str | None) -> control.Command:
    """The command ``tuitop ctl ACTION ARGUMENT`` asks for; CommandError when wrong."""
    value: int | None = None
    lane = ""
    if action in ("scale", "workers"):
        text = (argument or "").strip()
        if action == "scale" and text[:1] not in ("+", "-"):
            raise control.CommandError("give a step: +N or -N (e.g. +1)")
        try:
            value = int(text)
        except ValueError:
            raise control.CommandError(f"{text!r} is not a whole number") from None
    elif action in ("pause", "resume"):
        lane = argument or ""
    elif argument is not None:
        raise control.CommandError(f"{action} takes no argument")
    return control.new_command(action, value, lane, "tuitop ctl")


def command_adopt_tuleap(args: argparse.Namespace) -> int:
    def adopt(queue: QueueAdmin) -> int:
        lists = queue.tuleap_left()
        if lists is None:
            print(
                "nothing to adopt: Tuleap's database workers hold a message only inside "
                "their transaction, which the server rolls back when one stops"
            )
            return EXIT_OK
        if not lists:
            print("no processing list of Tuleap's workers holds a message")
            return EXIT_OK
        status = EXIT_OK
        for found in lists:
            name = f"{found.where} (Tuleap's worker {found.number})"
            if found.pid is not None:
                print(
                    f"tuitop: {name}: the worker still runs (pid {found.pid}); stop "
                    "tuleap-workers.service first",
                    file=sys.stderr,
                )
                status = EXIT_FAILURE
                continue
            if args.dry_run:
                print(f"{name}: {found.messages} message(s)")
                continue
            recovery = queue.recover(found.worker_id, f"left by Tuleap's worker {found.number}")
            print(
                f"{name}: {recovery.requeued} message(s) re-queued with one more try, "
                f"{recovery.dead_lettered} past their last try dead-lettered"
            )
        return status

    return _with_queue(args, adopt)


def command_hand_back(args: argparse.Namespace) -> int:
    def hand_back(queue: QueueAdmin) -> int:
        live = queue.live_pools()
        if live:
            print(
                f"tuitop: {', '.join(live)} still run(s) on this "
                f"{queue.settings.noun.removeprefix('the ')}: stop them first "
                "(a pool's heartbeat lasts 10 s after it is gone)",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        handed = queue.hand_back("handed back to Tuleap's workers")
        lanes = ", ".join(f"{lane} {count}" for lane, count in handed.lanes.items()) or "none"
        print(
            f"handed back to {TULEAP_QUEUE}: {handed.recovered} message(s) tuitop's workers "
            f"held, {sum(handed.lanes.values())} from lanes ({lanes}), {handed.retries} "
            "retries"
        )
        dead = queue.dead_letter_count()
        if dead:
            where = queue.dead_letters_at
            print(
                f"{dead} dead letter(s) stay in {where}, which only tuitop reads: "
                "'tuitop dead-letters' lists them, 'replay --all' puts them back in the queue"
            )
        return EXIT_OK

    return _with_queue(args, hand_back)


def command_install_unit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tuitop import systemdunit

    unit = systemdunit.render(
        args.config or (),
        user_unit=args.user,
        unit_dir=Path(args.unit_dir) if args.unit_dir else None,
        tuleap_cli=args.tuleap_cli,
    )
    if args.dry_run:
        print(f"# {unit.path}\n{unit.text}", end="")
        return EXIT_OK
    try:
        written = systemdunit.write(unit, force=args.force)
    except FileExistsError:
        print(
            f"tuitop: {unit.path} exists and differs (edited by hand?): --dry-run shows "
            "what would be written, --force replaces it; lasting changes belong in "
            "'systemctl edit tuitop.service'",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except OSError as error:
        print(f"tuitop: cannot write {unit.path}: {error.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{'wrote' if written else 'unchanged:'} {unit.path}")
    for note in unit.notes:
        print(f"note: {note}")
    print("then run:")
    for step in systemdunit.next_steps(unit, user_unit=args.user):
        print(f"  {step}")
    return EXIT_OK


def _interval_or_exit(args: argparse.Namespace) -> int:
    if not 0.05 <= args.interval <= 60:
        print("tuitop: --interval must be between 0.05 and 60 seconds", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return EXIT_OK


def command_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from tuitop.pool import PoolOptions, Supervisor
    from tuitop.pool.exporter import MetricsError

    if args.max_messages < 1:
        print("tuitop: --max-messages must be at least 1", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if args.control_stdin and (not args.no_ui or os.isatty(sys.stdin.fileno())):
        print("tuitop: --control-stdin is the UI's pipe to its pool, not for a terminal",
              file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG_ERROR
    if _interval_or_exit(args):
        return EXIT_CONFIG_ERROR
    if not 0.01 <= args.db_poll <= 10:
        print("tuitop: --db-poll must be between 0.01 and 10 seconds", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    task = _task_or_exit(args)
    if isinstance(task, int):
        return task
    settings = _settings_or_exit(args.config)
    if isinstance(settings, int):
        return settings
    metrics = _metrics_or_exit(args)
    if isinstance(metrics, int):
        return metrics
    if not args.no_ui:
        from tuitop.tui.app import run_with_pool

        return run_with_pool(argv, _ui_source(args, settings), args.interval)
    if not args.pool_name and not POOL_NAME.fullmatch(socket.gethostname()):
        print(
            f"tuitop: the host name {socket.gethostname()!r} cannot name a pool (more than "
            "200 characters, or some that would meet other keys in Redis): give one with "
            "--pool-name",
            file=sys.stderr,
        )
        return EXIT_CONFIG_ERROR
    options = PoolOptions(
        log_file=args.log_file or None,
        log_to_stderr=True,
        max_messages=args.max_messages,
        job_timeout=args.job_timeout,
        grace_period=args.grace,
        retry=RetryPolicy(base_delay=args.retry_delay, max_requeues=MAX_REQUEUES),
        handler_modules=tuple(args.handlers),
        sendmail=args.sendmail,
        task=task,
        tuleap_hold_limit=args.tuleap_list_timeout,
        doorbell_interval=args.db_poll,
        control_fd=sys.stdin.fileno() if args.control_stdin else None,
        pool_name=args.pool_name or socket.gethostname(),
        metrics=metrics,
    )
    at_start = settings.files
    try:
        supervisor = Supervisor(
            settings,
            options,
            reload=lambda: read_config(args.config, required=at_start).settings,
            watch=args.config or DEFAULT_CONFIG_FILES,
        )
    except MetricsError as error:
        print(f"tuitop: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return supervisor.run()


def _metrics_or_exit(args: argparse.Namespace) -> MetricsOptions | int | None:
    """Where to serve /metrics (None: nowhere), Tuleap's ``$prometheus_platform`` read
    from the files as the pool starts; or the exit code after saying why it cannot be
    served (the UI asks before it starts, its pool's error would only be in its log)."""
    from tuitop.pool.exporter import MetricsError, check_available
    from tuitop.pool.options import MetricsOptions

    if args.metrics_port is None:
        return None
    platform = read_config(args.config).variables.get("prometheus_platform")
    options = MetricsOptions(
        port=args.metrics_port,
        address=args.metrics_address,
        platform=platform.decode("utf-8", "replace") if isinstance(platform, bytes) else None,
    )
    if not args.no_ui:
        try:
            check_available(options.address, options.port)
        except MetricsError as error:
            print(f"tuitop: {error}", file=sys.stderr)
            return EXIT_FAILURE
    return options


def _task_or_exit(args: argparse.Namespace) -> TaskCommand | int | None:
    """The task command the options name (Tuleap's by default where Tuleap is installed),
    None for none; or the exit code after saying why it cannot run."""
    if args.task_command is None:
        if args.task_dir is not None:
            print("tuitop: --task-dir needs a --task-command", file=sys.stderr)
            return EXIT_CONFIG_ERROR
        return default_task_command()
    if not args.task_command.strip():
        return None
    directory = args.task_dir
    if directory is None:
        directory = TULEAP_SOURCE_ROOT if os.path.isdir(TULEAP_SOURCE_ROOT) else os.getcwd()
    try:
        return TaskCommand.parse(args.task_command, os.path.abspath(directory))
    except ValueError as error:
        print(f"tuitop: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


def _ui_source(
    args: argparse.Namespace, settings: Settings, client_name: str = "tuitop:ui"
) -> SnapshotSource:
    """The snapshot source of a UI: the store the config files name, followed as they
    change (a file that disappears is replaced, not dropped: the pool sees it so too)."""
    from tuitop.procmeter import ProcessMeter
    from tuitop.tui.source import SnapshotSource

    at_start = settings.files
    return SnapshotSource(
        lambda: read_config(args.config, required=at_start).settings,
        args.config or DEFAULT_CONFIG_FILES,
        meter=ProcessMeter(),
        client_name=client_name,
    )


def command_top(args: argparse.Namespace) -> int:
    from tuitop.tui.app import TuitopApp
    from tuitop.tui.logtail import FileTail

    if _interval_or_exit(args):
        return EXIT_CONFIG_ERROR
    settings = _settings_or_exit(args.config)
    if isinstance(settings, int):
        return settings
    if not settings.store.configured:
        print(f"tuitop: {NOT_CONFIGURED}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if args.json and not args.once:
        print("tuitop: top --json goes with --once", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if args.once:
        return _top_once(settings, as_json=args.json)
    source = _ui_source(args, settings, "tuitop:top")
    log = FileTail(args.log_file) if args.log_file else None
    try:
        TuitopApp(source, interval=args.interval, log=log, read_only=args.read_only).run()
    finally:
        source.close()
    return EXIT_OK


def _top_once(settings: Settings, *, as_json: bool) -> int:
    """``top --once``: one snapshot printed; a store that does not answer is said on
    stderr (password masked) with exit code 1."""
    from tuitop import summary

    store = settings.store
    try:
        view = open_view(store, settings.lanes, "tuitop:top")
        try:
            snapshot = view.snapshot(time.time())
        finally:
            view.close()
    except StoreError as error:
        print(f"tuitop: {error!s}", file=sys.stderr)
        return EXIT_FAILURE
    where = f"{'db' if isinstance(store, DatabaseSettings) else 'redis'} {store.address}"
    if as_json:
        print(json.dumps(summary.snapshot_json(snapshot, where), indent=2, allow_nan=False))
    else:
        print(summary.snapshot_text(snapshot, where))
    return EXIT_OK


def command_demo(args: argparse.Namespace) -> int:
    from tuitop.demo import DemoOptions, run_demo

    if _interval_or_exit(args):
        return EXIT_CONFIG_ERROR
    options = DemoOptions(
        rate=args.rate, workers=args.workers, interval=args.interval, queue=args.queue
    )
    return run_demo(options, no_ui=args.no_ui)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.print_usage(sys.stderr)
        parser.exit(
            getattr(args, "usage_exit_code", EXIT_CONFIG_ERROR),
            f"tuitop: error: unrecognized arguments: {' '.join(unknown)}\n",
        )
    commands = {
        "config": command_config,
        "enqueue": command_enqueue,
        "notify": command_notify,
        "dead-letters": command_dead_letters,
        "check": command_check,
        "ctl": command_ctl,
        "adopt-tuleap": command_adopt_tuleap,
        "hand-back": command_hand_back,
        "install-unit": command_install_unit,
        "demo": command_demo,
        "top": command_top,
    }
    if args.command in commands:
        return commands[args.command](args)
    return command_run(args, argv)
