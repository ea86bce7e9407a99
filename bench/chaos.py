"""The chaos campaign: nothing lost, whatever happens to the processes around the queue.

Two pools (two ``tuitop --no-ui``) serve one Redis (appendonly, fsync always) and send
notifications through a real SMTP server, while a producer pushes a stream of them (with
tuitop's own marked push, as a front end using the Notifier would) and, meanwhile:

* a random worker is SIGKILLed every 2 s;
* a pool's config file is saved every 5 s with another worker count (1 to 8);
* Redis is killed (-9) and started again;
* the SMTP server is down for 10 s;
* one pool's parent and all its workers are SIGKILLed at once (a host dying), and the
  pool is started again;
* a worker is frozen (SIGSTOP) past its heartbeat, then thawed.

Then the producer stops, the pools drain everything, and the campaign counts, by each
notification's artifact id: pushed, delivered (mails received), duplicates, dead-lettered,
resent after the relay's answer was lost, and lost — anything pushed that is neither
delivered nor a dead letter.

A duplicate is explained only by what may run or send a mail twice, one for each delivery
beyond the first: a worker killed or frozen while it held that very message after it was
mailed (each kill and freeze first stops the processes (SIGSTOP), reads their processing
lists, then kills), or the pool sending the mail again after the relay went down between
the mail's end and its answer (the pool logs each: "it may come twice"). A dead letter is
explained only when each of its tries was cut short by a kill of a worker holding it or by
the relay being down (the pool logs each such try). Exits 1 when anything is lost, or a
duplicate or a dead letter is not explained.

Run: ``python -m bench.chaos`` (``--messages``, ``--rate``); writes bench/results/chaos.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tuitop.backends.redis import keys
from tuitop.backends.redis.queue import Queue, parse_dead_letter
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.embedded.smtpserver import SmtpServer
from tuitop.message import decode, encode
from tuitop.notification import TOPIC, Mail, Notification

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "chaos.json"
MAY_COME_TWICE = re.compile(r"artifact #(\d+) changeset #\d+: mail to .*: it may come twice")
"""The pool's log line for a mail sent again (on the retry) because the relay went down
after the mail's end, before its answer: the relay may have stored the first."""
RESENT = "sent again after the relay's answer was lost (logged: it may come twice)"
"""What explains a duplicate the pool said may come."""
GIVEN_UP = re.compile(r"given up after (\d+) tries")
RELAY_FAILED = re.compile(r"artifact #(\d+) changeset #\d+: .*; \d+ mail\(s\) left for a retry")
"""The pool's log line for a try cut short by the relay (down, or refusing for now)."""


@dataclass
class Event:
    at: float
    what: str


@dataclass
class Report:
    pushed: int
    delivered: int
    duplicates: dict[int, list[str]]
    """Artifact id → what explains its deliveries beyond the first (:func:`explain_duplicates`;
    empty: unexplained)."""
    dead: int
    lost: list[int]
    resent: dict[int, int] = field(default_factory=dict)
    """Artifact id → how many times the pool sent its mail again after the relay's answer
    was lost (each logged "it may come twice")."""
    events: list[Event] = field(default_factory=list)
    seconds: float = 0.0
    dead_reasons: dict[int, str] = field(default_factory=dict)
    held: dict[int, int] = field(default_factory=dict)
    """Artifact id → how many kills or freezes of a worker holding it there were."""
    relay_failed: dict[int, int] = field(default_factory=dict)
    """Artifact id → how many of its tries the relay cut short (the SMTP server down)."""

    @property
    def unexplained(self) -> list[int]:
        """Duplicates that neither kills nor freezes of a worker holding the message, nor
        the pool's resends after a lost answer, account for."""
        return [artifact for artifact, why in self.duplicates.items() if not why]

    @property
    def unexplained_dead(self) -> list[int]:
        """Dead letters other than a message whose every try was cut short by a kill of a
        worker holding it or by the relay being down (a bug, a mail refused, …)."""
        found = []
        for artifact, reason in self.dead_reasons.items():
            tries = GIVEN_UP.search(reason)
            cut = self.held.get(artifact, 0) + self.relay_failed.get(artifact, 0)
            if tries is None or cut < int(tries.group(1)):
                found.append(artifact)
        return found


class Strike(Protocol):
    def __call__(self, processes: list[psutil.Process], what: str, *, kill: bool) -> None: ...


class PoolProcess:
    """One ``tuitop --no-ui`` with a config file of its own."""

    def __init__(self, directory: Path, name: str, redis_port: int, smtp_port: int) -> None:
        self.name = name
        self.config = directory / f"{name}.inc"
        self.log = directory / f"{name}.log"
        self.redis_port, self.smtp_port = redis_port, smtp_port
        self.process: subprocess.Popen[bytes] | None = None
        self.save(2)

    def save(self, workers: int) -> None:
        """Writes the config as an editor does: a new file renamed over the old one."""
        text = (
            "<?php\n$redis_server = '127.0.0.1';\n"
            f"$redis_port = {self.redis_port};\n$sys_nb_backend_workers = {workers};\n"
            "$sys_logger_level = 'info';\n$sys_noreply = 'noreply@chaos.example';\n"
            f"$email_transport = 'smtp';\n$email_relayhost = '127.0.0.1:{self.smtp_port}';\n"
        )
        temporary = self.config.with_suffix(".tmp")
        temporary.write_text(text)
        os.replace(temporary, self.config)

    def start(self) -> None:
        command = [
            sys.executable, "-m", "tuitop", "--no-ui", "--config", str(self.config),
            "--pool-name", self.name, "--log-file", str(self.log),
            "--retry-delay", "2", "--grace", "5",
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(REPO))
        output = open(self.log.with_suffix(".out"), "ab")  # noqa: SIM115 - the child's
        self.process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )

    def workers(self) -> list[psutil.Process]:
        if self.process is None or self.process.poll() is not None:
            return []
        try:
            family = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            return []
        found = []
        for process in family:
            try:
                if "tuitop: worker" in " ".join(process.cmdline()):  # its process title
                    found.append(process)
            except psutil.Error:
                continue
        return found

    def kill_whole(self, strike: Strike | None = None) -> None:
        """SIGKILL of the parent and every process it started, at once: a host dying
        (through ``strike``, which notes what its workers held)."""
        if self.process is None:
            return
        family = []
        with contextlib.suppress(psutil.Error):
            family = psutil.Process(self.process.pid).children(recursive=True)
        everyone = [psutil.Process(self.process.pid), *family]
        if strike is not None:
            strike(everyone, f"{self.name}: the whole host killed (-9)", kill=True)
        for process in everyone:
            with contextlib.suppress(psutil.Error):
                process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.kill_whole()


def notification_message(artifact: int) -> bytes:
    note = Notification(
        project_id=101,
        artifact_id=artifact,
        changeset_id=artifact,
        mails=(Mail((f"user{artifact % 97}@chaos.example",), f"artifact #{artifact}", "x"),),
    )
    return encode(TOPIC, note.to_payload())


def push_once(queue: Queue, raw: bytes) -> None:
    """Pushes ``raw`` exactly once, as tuitop's Notifier does (:meth:`Queue.push_marked`)
    but never giving up: a push whose reply is lost is asked about (its marker) until
    Redis answers — pushed again only when it did not land. ``queue``'s client must not
    retry on its own (redis-py's default does: the marker cannot tell that push apart)."""
    token = uuid.uuid4().hex
    while True:
        try:
            queue.push_marked(raw, token)
            return
        except redis.RedisError:
            pass
        while True:
            try:
                if queue.was_pushed(token):
                    return
                break  # it did not land: push again (the same token)
            except redis.RedisError:
                time.sleep(0.2)  # Redis away: ask again once it is back


class Campaign:
    def __init__(self, directory: Path, messages: int, rate: float, seed: int) -> None:
        self.directory = directory
        self.messages = messages
        self.rate = rate
        self.random = random.Random(seed)
        self.events: list[Event] = []
        self.began = time.monotonic()
        self.redis = EmbeddedRedis(directory=directory / "redis", appendonly=True)
        self.smtp = SmtpServer()
        self.pools: list[PoolProcess] = []
        self._producing = threading.Event()
        self.held: dict[int, list[tuple[float, str]]] = {}
        """Artifact id → (wall time, what) of each kill or freeze of a worker holding it."""

    # --- what happens ---------------------------------------------------------------

    def note(self, what: str) -> None:
        self.events.append(Event(time.monotonic() - self.began, what))

    def _client(self, *, retries: bool = True) -> redis.Redis:
        """A client of the campaign's Redis. ``retries=False`` for one that writes: redis-py
        (6 and later) runs a command again by itself after a connection error — after Redis
        did it and went down before the reply (killed -9 here), that is a push twice."""
        if retries:
            return self.redis.client()
        return self.redis.client(retry=Retry(NoBackoff(), 0))

    @staticmethod
    def _held_by(pids: list[int], client: redis.Redis) -> list[int]:
        """The artifact ids in the processing lists of the workers ``pids``."""
        held = []
        for pid in pids:
            pattern = f"{keys.processing_list('')}*#{pid}"
            for key in client.scan_iter(match=pattern, count=1000):
                for raw in client.lrange(key, 0, -1):
                    payload = decode(raw).payload
                    if isinstance(payload, dict) and "artifact_id" in payload:
                        held.append(int(payload["artifact_id"]))
        return held

    def _strike(self, processes: list[psutil.Process], what: str, *, kill: bool) -> None:
        """Freezes ``processes`` (SIGSTOP), reads what their workers hold — their
        processing lists, frozen: nothing taken or acked meanwhile — then kills them
        (SIGKILL) or leaves them frozen. Each message held is noted with ``what``: only
        those may run twice."""
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.suspend()
        time.sleep(0.05)  # what was on the wire before the stop lands first
        struck_at = time.time()
        held: list[int] = []
        client = self._client()
        deadline = time.monotonic() + 15
        try:
            # Read by pid (a worker just started may not be registered yet), and wait for
            # a Redis that is away: stopped, they hold what they hold until it is back.
            while True:
                try:
                    held = self._held_by([process.pid for process in processes], client)
                    break
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        break  # unknown: a duplicate of it would be unexplained
                    time.sleep(0.2)
        finally:
            client.close()
        for artifact in held:
            self.held.setdefault(artifact, []).append((struck_at, what))
        if kill:
            for process in processes:
                with contextlib.suppress(psutil.Error):
                    process.kill()
        self.note(what)

    def _start_redis(self) -> None:
        self.redis.start()
        client = self._client()
        client.config_set("appendfsync", "always")  # an acked write is on disk
        client.close()

    def produce(self) -> None:
        """Pushes every notification once, with the marked push: a push whose reply is
        lost is asked about (its marker) before it is pushed again — asked until Redis
        answers, however long it is away: a push whose reply was lost may have landed."""
        client = self._client(retries=False)
        queue = Queue(client)
        began = time.monotonic()
        for artifact in range(self.messages):
            target = began + artifact / self.rate
            while (delay := target - time.monotonic()) > 0:
                time.sleep(delay)
            push_once(queue, notification_message(artifact))
        self._producing.clear()
        client.close()

    def chaos(self, duration: float) -> None:
        """The events, on their schedule, until the producer is done."""
        at = {"redis": 0.25, "smtp": 0.40, "host": 0.55, "freeze": 0.70}
        done: set[str] = set()
        next_kill = next_save = 0.0
        saves = 0
        while self._producing.is_set():
            now = time.monotonic() - self.began
            progress = now / duration
            if now >= next_kill:
                next_kill = now + 2.0
                workers = [w for pool in self.pools for w in pool.workers()]
                if workers:
                    victim = self.random.choice(workers)
                    self._strike([victim], f"SIGKILL worker pid {victim.pid}", kill=True)
            if now >= next_save:
                next_save = now + 5.0
                pool = self.pools[saves % len(self.pools)]
                saves += 1
                count = self.random.randint(1, 8)
                pool.save(count)
                self.note(f"{pool.name}: config saved, {count} worker(s)")
            if "redis" not in done and progress >= at["redis"]:
                done.add("redis")
                self.note("Redis killed (-9)")
                self.redis.kill()
                time.sleep(2)
                self._start_redis()
                self.note("Redis started again")
            if "smtp" not in done and progress >= at["smtp"]:
                done.add("smtp")
                self.note("SMTP server down")
                self.smtp.stop()
                threading.Timer(10, self._smtp_back).start()
            if "host" not in done and progress >= at["host"]:
                done.add("host")
                pool = self.pools[0]
                pool.kill_whole(self._strike)
                time.sleep(3)
                pool.start()
                self.note(f"{pool.name}: started again")
            if "freeze" not in done and progress >= at["freeze"]:
                workers = [w for pool in self.pools for w in pool.workers()]
                if workers:
                    done.add("freeze")
                    frozen = self.random.choice(workers)
                    self._strike([frozen], f"worker pid {frozen.pid} frozen (SIGSTOP)", kill=False)
                    threading.Timer(12, self._thaw, args=(frozen,)).start()
            time.sleep(0.1)

    def _smtp_back(self) -> None:
        self.smtp.start()
        self.note("SMTP server back")

    def _thaw(self, process: psutil.Process) -> None:
        try:
            process.resume()
            self.note(f"worker pid {process.pid} thawed (SIGCONT)")
        except psutil.Error:
            pass

    # --- the run ------------------------------------------------------------------------

    def run(self, drain_timeout: float = 180.0) -> Report:
        self._start_redis()
        self.smtp.start()
        self.pools = [
            PoolProcess(self.directory, name, self.redis.port, self.smtp.port)
            for name in ("host-a", "host-b")
        ]
        try:
            for pool in self.pools:
                pool.start()
            duration = self.messages / self.rate
            self._producing.set()
            producer = threading.Thread(target=self.produce, daemon=True)
            producer.start()
            self.chaos(duration)
            producer.join()
            self.note("producer done")
            for pool in self.pools:
                pool.save(2)
            self._drain(drain_timeout)
            self.note("drained")
        finally:
            for pool in self.pools:
                pool.stop()
            report = self._count()
            self.smtp.stop()
            self.redis.close()
        report.seconds = time.monotonic() - self.began
        return report

    def _drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = self._client()
        try:
            while time.monotonic() < deadline:
                try:
                    lanes = [m.decode() for m in client.zrange(keys.LANES, 0, -1)]
                    waiting = client.llen(keys.QUEUE) + client.zcard(keys.DELAYED)
                    waiting += sum(client.llen(keys.lane_list(lane)) for lane in lanes)
                    held = sum(
                        client.llen(key) for key in client.scan_iter(match=keys.PROCESSING_PATTERN)
                    )
                except redis.RedisError:
                    time.sleep(0.5)
                    continue
                if waiting == 0 and held == 0:
                    return
                time.sleep(0.5)
        finally:
            client.close()

    def _count(self) -> Report:
        received = Counter(
            int(str(message.message["X-Tuleap-Artifact-Id"])) for message in self.smtp.messages
        )
        client = self._client()
        dead_ids = set()
        dead_reasons: dict[int, str] = {}
        for entry in client.lrange(keys.DEAD_LETTERS, 0, -1):
            letter = parse_dead_letter(entry)
            payload = decode(letter.message).payload
            if isinstance(payload, dict) and "artifact_id" in payload:
                dead_ids.add(int(payload["artifact_id"]))
                dead_reasons[int(payload["artifact_id"])] = letter.reason
        client.close()
        deliveries: dict[int, list[float]] = {}
        for message in self.smtp.messages:
            artifact = int(str(message.message["X-Tuleap-Artifact-Id"]))
            deliveries.setdefault(artifact, []).append(message.received_at)
        # The mails a pool sent again after the relay's answer was lost (it logs each).
        resent: Counter[int] = Counter()
        relay_failed: Counter[int] = Counter()
        for pool in self.pools:
            if pool.log.exists():
                log = pool.log.read_text()
                resent.update(int(n) for n in MAY_COME_TWICE.findall(log))
                relay_failed.update(int(n) for n in RELAY_FAILED.findall(log))
        return Report(
            pushed=self.messages,
            delivered=len(received),
            duplicates=explain_duplicates(deliveries, self.held, resent),
            dead=len(dead_ids - set(received)),
            dead_reasons=dead_reasons,
            held={artifact: len(strikes) for artifact, strikes in self.held.items()},
            relay_failed=dict(relay_failed),
            lost=[n for n in range(self.messages) if n not in received and n not in dead_ids],
            resent=dict(resent),
            events=self.events,
        )


def explain_duplicates(
    deliveries: dict[int, list[float]],
    held: dict[int, list[tuple[float, str]]],
    resent: Mapping[int, int],
) -> dict[int, list[str]]:
    """Artifact id → what explains each delivery beyond the first, for every mail received
    more than once (``deliveries``: the times it was received); an empty list when that
    is fewer than the deliveries beyond the first (unexplained).

    What explains one: a kill or freeze of a worker that held the message after it was
    first mailed (``held``: wall time and what, per artifact: mailed, not yet acked), or
    a resend of its mail after the relay's answer was lost (``resent``: how many the pool
    logged)."""
    duplicates: dict[int, list[str]] = {}
    for artifact, times in deliveries.items():
        if len(times) < 2:
            continue
        why = [what for at, what in held.get(artifact, []) if at >= min(times)]
        why += [RESENT] * resent.get(artifact, 0)
        duplicates[artifact] = why if len(why) >= len(times) - 1 else []
    return duplicates


def run_campaign(messages: int, rate: float, seed: int = 7) -> Report:
    with tempfile.TemporaryDirectory(prefix="tuitop-chaos-") as temp:
        return Campaign(Path(temp), messages, rate, seed).run()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=200.0, help="notifications pushed a second")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    report = run_campaign(args.messages, args.rate, args.seed)
    explained = len(report.duplicates) - len(report.unexplained)
    twice = sum(artifact in report.duplicates for artifact in report.resent)
    rows = [
        ("pushed", f"{report.pushed:,}"),
        ("delivered (mails received, once or more)", f"{report.delivered:,}"),
        (
            "duplicates",
            f"{len(report.duplicates):,} ({explained:,} explained: held by a worker as it "
            "was killed or frozen, or sent again after a lost answer)",
        ),
        (
            "dead-lettered",
            f"{report.dead:,} ({report.dead - len(report.unexplained_dead):,} with every try "
            "cut by a kill or the relay down)",
        ),
        (
            "sent again after a lost answer",
            f"{len(report.resent):,} (the relay down between a mail's end and its 250; "
            f"logged 'it may come twice'; {twice:,} received twice)",
        ),
        ("lost", f"{len(report.lost):,}"),
        ("events", f"{len(report.events):,} in {report.seconds:.0f} s"),
    ]
    width = max(len(label) for label, _ in rows)
    print("tuitop chaos campaign")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    for artifact in report.unexplained[:10]:
        print(f"  unexplained duplicate: artifact {artifact}")
    for artifact in report.unexplained_dead[:10]:
        print(f"  dead letter not explained: artifact {artifact}: {report.dead_reasons[artifact]}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "messages": args.messages,
        "rate": args.rate,
        "pushed": report.pushed,
        "delivered": report.delivered,
        "duplicates": {str(k): v for k, v in report.duplicates.items()},
        "dead": report.dead,
        "dead_reasons": {str(k): v for k, v in report.dead_reasons.items()},
        "resent": {str(k): v for k, v in report.resent.items()},
        "lost": report.lost,
        "events": [{"at": round(e.at, 2), "what": e.what} for e in report.events],
        "seconds": report.seconds,
    }
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")
    return 1 if report.lost or report.unexplained or report.unexplained_dead else 0


if __name__ == "__main__":
    sys.exit(main())
