"""Mail throughput (issue 13): notifications/s and mails/s through a real SMTP server.

End to end through the real pool (``python -m tuitop --no-ui``, 2 workers, a private Redis)
and a real SMTP server (aiosmtpd in a process of its own, counting what it accepts:
:mod:`bench.smtp_sink`), the pool configured as Tuleap is (``$email_transport = 'smtp'``,
``$email_relayhost``), for notifications of one mail each and of ten mails each, each

1. with tuitop as it is: a worker keeps its SMTP connection between mails and jobs
   (:class:`tuitop.mail.SmtpTransport`);
2. with a new SMTP connection per mail: the same handler, with a transport made anew for
   each mail (:mod:`bench.fresh_mail_handler`, loaded with ``--handlers``; tuitop itself
   has no such option).

The notifications are queued first, then handed to the idle pool at once (a RENAME); a run
ends when the server has accepted every mail (the time of the last one, taken by the
server). Then the bench waits for the pool to ack everything and checks that nothing was
dead-lettered or left for a retry, and that no mail came twice.

Besides, the transport layer alone, in a tight loop of this process: the same mails to the
same server through one :class:`tuitop.mail.SmtpTransport`, and through a new one per mail.

The cases are alternated run by run (``--runs``); prints min / median / max and writes
``bench/results/mail.json``. Run: ``python -m bench.mail_bench``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psutil
import redis

from bench.common import config_path, start_pool, stop, wait_for_workers
from bench.fresh_mail_handler import FreshConnectionTransport
from bench.smtp_sink import SmtpSink
from tuitop.backends.redis import keys
from tuitop.config import MailSettings, load_config
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.mail import MailTransport, SmtpTransport
from tuitop.message import encode
from tuitop.notification import TOPIC, Mail, Notification, build_email

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "mail.json"
WORKERS = 2
NOREPLY = '"Tuleap" <noreply@tuleap.example.com>'
REUSED, FRESH = "reused", "fresh"
STAGING = "bench:staging"
POOL_LABELS = {REUSED: "kept connection (tuitop)", FRESH: "new connection per mail"}
LOOP_LABELS = {REUSED: "one SmtpTransport", FRESH: "a new SmtpTransport per mail"}

COMMENT = "The reproduction steps above fail on the current build; looking into it now. " * 6
TEXT = (
    "bug #{artifact} was modified by Alice Example (alice)\n\n"
    "  Status: New => In progress\n  Assigned to: None => Bob Example (bob)\n\n"
    f"Follow-up comment:\n{COMMENT}\n\n"
    "--------------------------------------------------------------------\n"
    "https://tuleap.example.com/plugins/tracker/?aid={artifact}\n"
    "You are receiving this mail because you are in the CC list of this artifact.\n"
)
HTML = (
    "<html><body><p><strong>bug #{artifact}</strong> was modified by "
    '<a href="https://tuleap.example.com/users/alice">Alice Example</a></p>'
    "<ul><li>Status: <del>New</del> <ins>In progress</ins></li>"
    "<li>Assigned to: <del>None</del> <ins>Bob Example</ins></li></ul>"
    f"<blockquote>{COMMENT}</blockquote>"
    '<p><a href="https://tuleap.example.com/plugins/tracker/?aid={artifact}">'
    "bug #{artifact}</a></p>"
    "<p>You are receiving this mail because you are in the CC list of this artifact.</p>"
    "</body></html>"
)


def notification(index: int, mails: int) -> Notification:
    """A tracker notification of ``mails`` mails (text and HTML, one recipient each)."""
    return Notification(
        project_id=101,
        artifact_id=index,
        changeset_id=100_000 + index,
        mails=tuple(
            Mail(
                (f"user{index % 500}.{number}@example.com",),
                f"[bug #{index}] The export fails on large projects",
                TEXT.format(artifact=index),
                HTML.format(artifact=index),
            )
            for number in range(mails)
        ),
    )


def write_config(directory: Path, redis_port: int, smtp: SmtpSink) -> Path:
    path = config_path(directory)
    path.write_text(
        "<?php\n$redis_server = '127.0.0.1';\n"
        f"$redis_port = {redis_port};\n$sys_nb_backend_workers = {WORKERS};\n"
        f"$sys_logger_level = 'warning';\n$sys_noreply = '{NOREPLY}';\n"
        "$email_transport = 'smtp';\n"
        f"$email_relayhost = '{smtp.host}:{smtp.port}';\n"
    )
    return path


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process and its descendants: the live ones, and (through
    their parents' children times) those that exited and were reaped, such as a worker
    replaced after ``--max-messages``."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def settle(client: redis.Redis, timeout: float = 30) -> None:
    """Waits until nothing is queued, held or waiting for a retry: everything acked."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = sum(client.llen(key) for key in client.scan_iter(match=keys.PROCESSING_PATTERN))
        if not held and not client.llen(keys.QUEUE) and not client.zcard(keys.DELAYED):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the pool did not ack everything in {timeout:g} s")


def through_pool(
    directory: Path,
    server: EmbeddedRedis,
    sink: SmtpSink,
    config: Path,
    *,
    notifications: int,
    mails: int,
    connection: str,
) -> dict[str, Any]:
    """One run: ``notifications`` of ``mails`` mails each, drained by an idle pool."""
    client = server.client()
    client.flushall()
    pipe = client.pipeline(transaction=False)
    for index in range(notifications):
        pipe.lpush(STAGING, encode(TOPIC, notification(index, mails).to_payload()))
    pipe.execute()
    extra = ("--handlers", "bench.fresh_mail_handler") if connection == FRESH else ()
    pool = start_pool(directory, config, *extra)
    total = notifications * mails
    try:
        wait_for_workers(client, WORKERS)
        meters = {"pool": pool.pid, "smtp": sink.pid, "redis": server.pid or 0}
        cpu_before = {name: cpu_seconds(pid) for name, pid in meters.items()}
        before = sink.counts()
        begin = time.time()
        client.rename(STAGING, keys.QUEUE)
        after = sink.wait_for(before.mails + total, timeout=120 + total * 0.05)
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in meters.items()}
        settle(client)
        dead = int(client.llen(keys.DEAD_LETTERS))
    finally:
        stop(pool)
        client.close()
    seconds = after.last_at - begin
    extra_mails = sink.counts().mails - before.mails - total
    recipients = after.recipients - before.recipients
    if dead or extra_mails or recipients != total:
        raise RuntimeError(
            f"{dead} dead letter(s), {extra_mails} mail(s) beyond {total}, "
            f"{recipients} recipients for {total} mails of one each"
        )
    return {
        "notifications": notifications,
        "mails": total,
        "seconds": seconds,
        "notifications_per_second": notifications / seconds,
        "mails_per_second": total / seconds,
        "connections": after.connections - before.connections,
        "recipients": recipients,
        "dead_letters": dead,
        "cpu_ms_per_mail": {name: 1000 * value / total for name, value in cpu.items()},
        # The machine's 1-minute load when the run ended (other work may share it).
        "load_average": os.getloadavg()[0],
    }


def transport_alone(
    sink: SmtpSink, settings: MailSettings, count: int, connection: str
) -> dict[str, Any]:
    """``count`` mails sent in a tight loop of this process (the mails built beforehand)."""
    note = notification(0, 1)
    built = time.perf_counter()
    messages: list[EmailMessage] = [
        build_email(note.mails[0], settings.noreply, note) for _ in range(count)
    ]
    build_ms = 1000 * (time.perf_counter() - built) / count
    make: Callable[[MailSettings], MailTransport] = (
        SmtpTransport if connection == REUSED else FreshConnectionTransport
    )
    transport = make(settings)
    before = sink.counts()
    server_before, client_before = cpu_seconds(sink.pid), time.process_time()
    begin = time.perf_counter()
    for message in messages:
        transport.send(message)
    seconds = time.perf_counter() - begin
    client_cpu, server_cpu = (
        time.process_time() - client_before,
        cpu_seconds(sink.pid) - server_before,
    )
    transport.close()
    after = sink.wait_for(before.mails + count, timeout=10)
    return {
        "mails": count,
        "seconds": seconds,
        "mails_per_second": count / seconds,
        "per_mail_ms": 1000 * seconds / count,
        "build_email_ms": build_ms,
        "connections": after.connections - before.connections,
        "cpu_ms_per_mail": {"client": 1000 * client_cpu / count, "smtp": 1000 * server_cpu / count},
    }


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def triple(values: list[float], digits: int = 0) -> str:
    figures = spread(values)
    return " / ".join(f"{figures[name]:,.{digits}f}" for name in ("min", "median", "max"))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of every case, alternated")
    parser.add_argument(
        "--single", type=int, default=1500, help="notifications of one mail per run"
    )
    parser.add_argument("--tens", type=int, default=150, help="notifications of ten mails per run")
    parser.add_argument("--loop", type=int, default=1000, help="mails per transport-alone loop")
    args = parser.parse_args()
    sizes = {1: args.single, 10: args.tens}
    pool: dict[int, dict[str, list[dict[str, Any]]]] = {
        mails: {REUSED: [], FRESH: []} for mails in sizes
    }
    alone: dict[str, list[dict[str, Any]]] = {REUSED: [], FRESH: []}
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory() as temp, EmbeddedRedis() as server, SmtpSink() as sink:
        directory = Path(temp)
        config = write_config(directory, server.port, sink)
        settings = load_config([str(config)]).settings.mail
        for run in range(args.runs):
            # Alternated, and the order swapped run by run: neither always goes first.
            order = (REUSED, FRESH) if run % 2 == 0 else (FRESH, REUSED)
            for mails, notifications in sizes.items():
                for connection in order:
                    result = through_pool(
                        directory,
                        server,
                        sink,
                        config,
                        notifications=notifications,
                        mails=mails,
                        connection=connection,
                    )
                    pool[mails][connection].append(result)
                    print(
                        f"run {run + 1}: {notifications} x {mails} mail(s), {connection}: "
                        f"{result['notifications_per_second']:,.0f} notifications/s, "
                        f"{result['mails_per_second']:,.0f} mails/s, "
                        f"{result['connections']} connection(s), "
                        f"load {result['load_average']:.1f}; CPU ms per mail: "
                        + ", ".join(
                            f"{name} {value:.2f}"
                            for name, value in result["cpu_ms_per_mail"].items()
                        ),
                        flush=True,
                    )
            for connection in order:
                alone[connection].append(transport_alone(sink, settings, args.loop, connection))
        redis_version = server.client().info("server")["redis_version"]
    note = notification(0, 1)
    machine = {
        "node": platform.node(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "aiosmtpd": importlib.metadata.version("aiosmtpd"),
        "redis": redis_version,
        # Other work may share the machine: its load before and after the runs.
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
    }
    mail_bytes = len(build_email(note.mails[0], NOREPLY, note).as_bytes())
    report(args, sizes, pool, alone, machine, mail_bytes)


def cpu_cell(runs: list[dict[str, Any]], names: tuple[str, str]) -> str:
    """The medians of two CPU figures per mail, in ms: 'a · b'."""
    return " · ".join(
        f"{statistics.median(run['cpu_ms_per_mail'][name] for run in runs):.2f}" for name in names
    )


def report(
    args: argparse.Namespace,
    sizes: dict[int, int],
    pool: dict[int, dict[str, list[dict[str, Any]]]],
    alone: dict[str, list[dict[str, Any]]],
    machine: dict[str, Any],
    mail_bytes: int,
) -> None:
    rows: list[tuple[str, ...]] = []
    ratios: dict[str, list[float]] = {}
    for mails, notifications in sizes.items():
        label = f"{notifications:,} notifications of {mails} mail{'s' if mails > 1 else ''}"
        rows.append((label, "", "", "", ""))
        for connection in (REUSED, FRESH):
            runs = pool[mails][connection]
            rows.append(
                (
                    f"  {POOL_LABELS[connection]}",
                    triple([run["notifications_per_second"] for run in runs]),
                    triple([run["mails_per_second"] for run in runs]),
                    ", ".join(str(run["connections"]) for run in runs),
                    cpu_cell(runs, ("pool", "smtp")),
                )
            )
        pairs = [
            kept["mails_per_second"] / fresh["mails_per_second"]
            for kept, fresh in zip(pool[mails][REUSED], pool[mails][FRESH], strict=True)
        ]
        ratios[str(mails)] = pairs
        rows.append(("  kept / new, run by run", "", triple(pairs, 2) + " x", "", ""))
    rows.append((f"transport alone, {args.loop:,} mails, one process", "", "", "", ""))
    for connection in (REUSED, FRESH):
        runs = alone[connection]
        rows.append(
            (
                f"  {LOOP_LABELS[connection]}",
                "",
                triple([run["mails_per_second"] for run in runs]),
                ", ".join(str(run["connections"]) for run in runs),
                cpu_cell(runs, ("client", "smtp")),
            )
        )
    pairs = [
        kept["mails_per_second"] / fresh["mails_per_second"]
        for kept, fresh in zip(alone[REUSED], alone[FRESH], strict=True)
    ]
    ratios["transport"] = pairs
    rows.append(("  kept / new, run by run", "", triple(pairs, 2) + " x", "", ""))
    builds = [run["build_email_ms"] for connection in (REUSED, FRESH) for run in alone[connection]]
    rows.append(("  build_email, not in the loop's time", "", "", "", f"{triple(builds, 2)}"))
    header = ("", "notifications/s", "mails/s", "connections", "CPU ms/mail")
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    print(
        f"tuitop mail benchmark — {machine['node']}, {machine['cores']} cores, Python "
        f"{machine['python']}, aiosmtpd {machine['aiosmtpd']}, Redis {machine['redis']}, "
        f"{WORKERS} workers, {mail_bytes:,}-byte mails; min / median / max of {args.runs} "
        f"(CPU: medians, pool or client · SMTP server)"
    )
    for row in [header, *rows]:
        print(
            "  ".join(
                cell.ljust(width) if column == 0 else cell.rjust(width)
                for column, (cell, width) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    document = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "workers": WORKERS,
        "mail_bytes": mail_bytes,
        "runs": args.runs,
        "pool": {
            str(mails): {
                connection: {
                    "runs": pool[mails][connection],
                    "notifications_per_second": spread(
                        [run["notifications_per_second"] for run in pool[mails][connection]]
                    ),
                    "mails_per_second": spread(
                        [run["mails_per_second"] for run in pool[mails][connection]]
                    ),
                }
                for connection in (REUSED, FRESH)
            }
            for mails in sizes
        },
        "transport_alone": {
            connection: {
                "runs": alone[connection],
                "mails_per_second": spread([run["mails_per_second"] for run in alone[connection]]),
            }
            for connection in (REUSED, FRESH)
        },
        "kept_over_new": ratios,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
