"""A real SMTP server on 127.0.0.1 that keeps every message it accepts.

For ``tuitop demo`` (the embedded default's relay) and the tests. :class:`SmtpServer`
runs aiosmtpd in a thread of its own;
its behaviour can be changed while it runs: answer DATA slowly (to kill a sender in the
middle of a job), refuse messages with a 4xx or 5xx reply (to exercise retries), and
require AUTH PLAIN or LOGIN (without TLS: it is for tests and demos only).
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = ["ReceivedMessage", "SmtpServer"]

HOST = "127.0.0.1"
ACCEPTED_REPLY = "250 2.0.0 OK: queued"
DEFAULT_REFUSAL = "451 4.3.0 Try again later"
DEFAULT_WAIT = 5.0


@dataclass(frozen=True)
class ReceivedMessage:
    """One message as the server got it: envelope, raw bytes, and parsed (``\n`` line ends)."""

    mail_from: str
    recipients: tuple[str, ...]
    message: EmailMessage
    raw: bytes
    # time.time() when the DATA transfer ended (before any delay).
    received_at: float
    # The AUTH user name, None when the sender did not authenticate.
    login: str | None

    @property
    def subject(self) -> str:
        """The decoded Subject header, '' when there is none."""
        subject = self.message["Subject"]
        return "" if subject is None else str(subject)


class SmtpServer:
    """An SMTP server on 127.0.0.1 with a port of its own; ``start()`` or ``with`` runs it.

    Every message is first received whole; then the server waits ``delay`` seconds, then
    either refuses it (while a refusal is set, see :meth:`refuse`) or accepts it. Each
    message ends in exactly one of :attr:`messages` (answered 250), :attr:`refused`
    (answered the refusal) or :attr:`abandoned` (the sender went away during the delay,
    before any answer: a real server would usually have delivered it).

    With ``username`` and ``password`` the server offers AUTH PLAIN and LOGIN without TLS
    and refuses MAIL FROM (530) until the sender has authenticated.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        delay: float = 0.0,
        refusal: str | None = None,
        refusals: int | None = None,
        username: str | None = None,
        password: str | None = None,
        ready_timeout: float = DEFAULT_WAIT,
    ) -> None:
        """``port`` 0 takes a free one; ``refusal``/``refusals`` as for :meth:`refuse`."""
        if (username is None) != (password is None):
            raise ValueError("AUTH needs both a username and a password")
        self._condition = threading.Condition()
        self._messages: list[ReceivedMessage] = []
        self._refused: list[ReceivedMessage] = []
        self._abandoned: list[ReceivedMessage] = []
        self._hung_up: list[ReceivedMessage] = []
        self._hang_ups = 0
        self._delay = delay
        self._refusal: str | None = None
        self._refusals_left: int | None = None
        if refusal is not None:
            self.refuse(refusal, times=refusals)
        self._credentials = None if username is None or password is None else (username, password)
        self._port = port
        self._ready_timeout = ready_timeout
        self._controller: _Controller | None = None

    # --- life cycle --------------------------------------------------------------------

    def start(self) -> SmtpServer:
        """Starts listening; returns self once the server answers. Does nothing if running.

        After :meth:`stop`, listens again on the same port; what was received is kept.
        """
        if self._controller is None:
            # aiosmtpd's own auth_required=True warns (no TLS) on every connection; the
            # handler's MAIL hook refuses unauthenticated senders instead.
            auth: dict[str, Any] = {}
            if self._credentials is not None:
                auth = {"authenticator": self._authenticate, "auth_require_tls": False}
            # A Controller cannot start again once stopped (its loop is closed): one per run.
            controller = _Controller(
                _Handler(self),
                hostname=HOST,
                port=self._port,
                ready_timeout=self._ready_timeout,
                ident="tuitop test SMTP server",
                **auth,
            )
            controller.start()
            self._port = controller.port
            self._controller = controller
        return self

    def stop(self) -> None:
        """Stops listening and closes the connections. Idempotent."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._controller is not None

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        """The port it listens on; 0 before the first start when created with port 0."""
        return self._port

    def __repr__(self) -> str:
        auth = ", AUTH" if self._credentials else ""
        return f"SmtpServer({HOST}:{self.port}{auth}, {len(self.messages)} messages)"

    # --- behaviour -----------------------------------------------------------------------

    def set_delay(self, seconds: float) -> None:
        """Wait this long after receiving a message before answering it."""
        with self._condition:
            self._delay = seconds

    def refuse(self, reply: str = DEFAULT_REFUSAL, *, times: int | None = None) -> None:
        """Answer the next ``times`` messages (all of them when None) with ``reply``.

        ``reply`` is a full SMTP reply such as ``451 4.3.0 Try again later`` or
        ``550 5.7.1 Rejected``: a 4xx is a temporary failure, a 5xx a permanent one.
        """
        code = reply[:3]
        if not (len(code) == 3 and code.isdigit() and code[0] in "45" and reply[3:4] in ("", " ")):
            raise ValueError(f"a refusal is a 4xx or 5xx SMTP reply, not {reply!r}")
        with self._condition:
            self._refusal = reply
            self._refusals_left = times

    def hang_up(self, times: int = 1) -> None:
        """Close the connection of the next ``times`` messages once each is received whole,
        without an answer: as a relay that takes a mail and then loses the line. They are
        kept in :attr:`hung_up` (a real relay would usually deliver them)."""
        with self._condition:
            self._hang_ups = times

    def accept(self) -> None:
        """Stop refusing: accept every message from now on."""
        with self._condition:
            self._refusal = None
            self._refusals_left = None

    # --- what arrived --------------------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        """The accepted messages, oldest first (a copy)."""
        with self._condition:
            return list(self._messages)

    @property
    def refused(self) -> list[ReceivedMessage]:
        with self._condition:
            return list(self._refused)

    @property
    def abandoned(self) -> list[ReceivedMessage]:
        with self._condition:
            return list(self._abandoned)

    @property
    def hung_up(self) -> list[ReceivedMessage]:
        """Messages received whole whose connection the server closed unanswered."""
        with self._condition:
            return list(self._hung_up)

    def wait_for(self, count: int, timeout: float = DEFAULT_WAIT) -> list[ReceivedMessage]:
        """The accepted messages once there are at least ``count``; TimeoutError if not in time."""
        with self._condition:
            if not self._condition.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(
                    f"{len(self._messages)} of {count} messages accepted within {timeout:g} s "
                    f"({len(self._refused)} refused, {len(self._abandoned)} abandoned)"
                )
            return list(self._messages)

    def clear(self) -> None:
        """Forgets every message received so far."""
        with self._condition:
            self._messages.clear()
            self._refused.clear()
            self._abandoned.clear()
            self._hung_up.clear()

    # --- called from the server's thread -----------------------------------------------

    @property
    def _requires_auth(self) -> bool:
        return self._credentials is not None

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if self._credentials is None or not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        username, password = (value.encode() for value in self._credentials)
        # Both compared, always, so the time taken says nothing about which one was wrong.
        user_ok = hmac.compare_digest(data.login, username)
        password_ok = hmac.compare_digest(data.password, password)
        if user_ok and password_ok:
            return AuthResult(success=True, auth_data=data)
        return AuthResult(success=False, handled=False)

    async def _answer(self, received: ReceivedMessage) -> str:
        with self._condition:
            delay = self._delay
        try:
            if delay > 0:
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self._record(self._abandoned, received)
            raise
        with self._condition:
            reply = self._refusal
            if reply is not None and self._refusals_left is not None:
                self._refusals_left -= 1
                if self._refusals_left <= 0:
                    self._refusal = self._refusals_left = None
        self._record(self._messages if reply is None else self._refused, received)
        return ACCEPTED_REPLY if reply is None else reply

    def _take_hang_up(self) -> bool:
        with self._condition:
            if self._hang_ups <= 0:
                return False
            self._hang_ups -= 1
            return True

    def _record(self, bucket: list[ReceivedMessage], received: ReceivedMessage) -> None:
        with self._condition:
            bucket.append(received)
            self._condition.notify_all()


class _Handler:
    """aiosmtpd's handler: turns the envelope into a ReceivedMessage for the server."""

    def __init__(self, server: SmtpServer) -> None:
        self._server = server

    async def handle_MAIL(
        self,
        smtp: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if self._server._requires_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        # A MAIL hook that accepts must fill the envelope itself.
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        received = ReceivedMessage(
            mail_from=envelope.mail_from or "",
            recipients=tuple(envelope.rcpt_tos),
            # Parsed with \n line ends, as Python writes messages; raw keeps the wire's \r\n.
            message=BytesParser(policy=default_policy).parsebytes(raw.replace(b"\r\n", b"\n")),
            raw=raw,
            received_at=time.time(),
            login=None if login is None else login.decode("utf-8", "replace"),
        )
        if self._server._take_hang_up():
            self._server._record(self._server._hung_up, received)
            if isinstance(smtp.transport, asyncio.Transport):
                smtp.transport.abort()  # no answer: the line is lost after the mail's end
            return "250 OK"  # goes nowhere
        return await self._server._answer(received)


class _Controller(Controller):
    """aiosmtpd's Controller, binding port 0 when asked, with no race for a free port.

    It learns the port the kernel chose before ``start()`` connects to it.
    """

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        creating = super()._create_server()

        async def create() -> asyncio.AbstractServer:
            server = await creating
            if isinstance(server, asyncio.Server):  # what loop.create_server() makes
                self.port = server.sockets[0].getsockname()[1]
            return server

        return create()
