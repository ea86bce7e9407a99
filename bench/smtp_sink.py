"""An SMTP server for the mail benchmark: aiosmtpd in a process of its own, which counts.

A benchmark's harness must not share its GIL with the server it measures against (as
:class:`tuitop.embedded.smtpserver.SmtpServer` does: a thread of the caller's process), so the sink
runs aiosmtpd's protocol on an event loop in a child process (``spawn``: nothing of the
harness is inherited). Its handler does the least a server can: it counts the mail and
its recipients and answers 250; nothing is parsed or kept. The counts are in shared memory,
read by the harness without asking the server anything:

* ``mails``: mails accepted (DATA answered 250);
* ``recipients``: their recipients;
* ``connections``: SMTP connections opened (one per new session: what reuse saves);
* ``last_at``: ``time.time()`` when the last mail was accepted (so that the harness can
  poll lazily and still time the end exactly).
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import signal
import time
from dataclasses import dataclass
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.synchronize import Event

from aiosmtpd.smtp import SMTP, Envelope, Session

HOST = "127.0.0.1"
START_TIMEOUT = 15.0


@dataclass(frozen=True)
class Counts:
    mails: int
    recipients: int
    connections: int
    last_at: float


class _Shared:
    """The counters, in shared memory without locks: one writer (the sink's event loop),
    and aligned 8-byte values, which a reader sees whole."""

    def __init__(self, context: SpawnContext) -> None:
        self.port = context.RawValue(ctypes.c_int64, 0)
        self.mails = context.RawValue(ctypes.c_int64, 0)
        self.recipients = context.RawValue(ctypes.c_int64, 0)
        self.connections = context.RawValue(ctypes.c_int64, 0)
        self.last_at = context.RawValue(ctypes.c_double, 0.0)


class _CountingHandler:
    def __init__(self, shared: _Shared) -> None:
        self._shared = shared

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        shared = self._shared
        # The time first: a reader that sees the count sees the time of that mail.
        shared.last_at.value = time.time()
        shared.recipients.value += len(envelope.rcpt_tos)
        shared.mails.value += 1
        return "250 2.0.0 OK"


def _serve(shared: _Shared, ready: Event) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the harness's ^C: it stops us itself

    async def main() -> None:
        loop = asyncio.get_running_loop()
        handler = _CountingHandler(shared)

        def session() -> SMTP:
            shared.connections.value += 1
            # A hostname given: else aiosmtpd looks up this host's FQDN for every connection.
            return SMTP(handler, hostname="sink.bench", ident="bench sink", loop=loop)

        server = await loop.create_server(session, HOST, 0)
        shared.port.value = server.sockets[0].getsockname()[1]
        ready.set()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(main())


class SmtpSink:
    """The counting SMTP server, in a child process; ``with`` starts and stops it."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._shared = _Shared(self._context)
        self._process: SpawnProcess | None = None

    def start(self) -> SmtpSink:
        ready = self._context.Event()
        self._process = self._context.Process(
            target=_serve, args=(self._shared, ready), name="bench-smtp-sink", daemon=True
        )
        self._process.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.wait(0.05):
            if not self._process.is_alive() or time.monotonic() > deadline:
                code = self._process.exitcode
                self.stop()
                why = f"exited with {code}" if code is not None else f"not in {START_TIMEOUT:g} s"
                raise RuntimeError(f"the SMTP sink did not start: {why}")
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
            self._process = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return int(self._shared.port.value)

    @property
    def pid(self) -> int:
        return self._process.pid or 0 if self._process is not None else 0

    def counts(self) -> Counts:
        shared = self._shared
        return Counts(
            mails=int(shared.mails.value),
            recipients=int(shared.recipients.value),
            connections=int(shared.connections.value),
            last_at=float(shared.last_at.value),
        )

    def wait_for(self, mails: int, timeout: float, poll: float = 0.01) -> Counts:
        """The counts once at least ``mails`` were accepted; TimeoutError if not in time."""
        deadline = time.monotonic() + timeout
        while (counts := self.counts()).mails < mails:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{counts.mails} of {mails} mails in {timeout:g} s")
            time.sleep(poll)
        return counts
