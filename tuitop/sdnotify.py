"""systemd's notification protocol, the sending side (``sd_notify(3)``).

A notification is one datagram of ``NAME=value`` lines (``READY=1``, ``STATUS=…``,
``WATCHDOG=1`` …) sent to the AF_UNIX socket named by ``$NOTIFY_SOCKET``: a path, or
``@name`` in the abstract namespace. systemd tells who sent it by the credentials the
kernel attaches (with ``NotifyAccess=main`` it takes the main process's word only).

Written here rather than taken from a library: the protocol is one ``sendto``. The
pure-Python ``sdnotify`` package has not changed since 2017, swallows every error and
reads neither ``$WATCHDOG_USEC`` nor ``$WATCHDOG_PID``; ``systemd-python`` and
``cysystemd`` are C bindings that need libsystemd's headers to build on a forge host.

:meth:`SystemdNotifier.from_environment` removes the three variables from the process's
environment as it reads them (libsystemd's ``unset_environment``), so that no process
started afterwards (the workers' forkserver, the workers, Tuleap's task processes) can
notify on this one's behalf: under ``NotifyAccess=all`` systemd would believe a task's
``READY=1`` or ``WATCHDOG=1``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import MutableMapping

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"
SEND_TIMEOUT = 1.0
"""The longest a notification may block its sender (systemd's socket buffer full): the
pool's loop must not hang on its service manager."""


def socket_address(value: str) -> str | bytes:
    """The address ``$NOTIFY_SOCKET`` names: a path, or (``@name``) a name in the
    abstract namespace. ValueError for anything else (systemd ≥ 254's ``vsock:``
    addresses, for a service in a virtual machine, are not supported)."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode("utf-8", "surrogateescape")
    raise ValueError(f"{NOTIFY_SOCKET}={value!r} is neither a path nor an @abstract name")


def watchdog_interval(usec: str | None, pid: str | None, own_pid: int) -> float | None:
    """The watchdog's interval in seconds, as ``sd_watchdog_enabled(3)`` reads it: set
    when ``usec`` is a positive number and ``pid`` is unset or ``own_pid`` (the variables
    were meant for this process, not inherited from a parent); None otherwise."""
    if usec is None:
        return None
    try:
        microseconds = int(usec)
        if pid is not None and int(pid) != own_pid:
            return None
    except ValueError:
        return None
    return microseconds / 1_000_000 if microseconds > 0 else None


def monotonic_usec() -> int:
    """``CLOCK_MONOTONIC`` in microseconds, the clock of ``MONOTONIC_USEC=``."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class SystemdNotifier:
    """Sends notifications to one service manager's socket."""

    def __init__(self, address: str | bytes, watchdog: float | None = None) -> None:
        """``address``: as :func:`socket_address` returns it; ``watchdog``: the interval
        the service manager expects ``WATCHDOG=1`` within (None: no watchdog)."""
        self.address = address
        self.watchdog = watchdog
        # Not inherited by children (Python's sockets never are): only this process
        # holds it.
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.settimeout(SEND_TIMEOUT)

    @classmethod
    def from_environment(
        cls, environ: MutableMapping[str, str] | None = None
    ) -> SystemdNotifier | None:
        """The notifier ``$NOTIFY_SOCKET`` names, None when it is unset (no service
        manager waits for notifications). The variables are removed from ``environ``
        (default: this process's) whatever they hold; ValueError for a socket address
        that cannot be used."""
        environment = os.environ if environ is None else environ
        value = environment.pop(NOTIFY_SOCKET, None)
        usec = environment.pop(WATCHDOG_USEC, None)
        pid = environment.pop(WATCHDOG_PID, None)
        if not value:
            return None
        return cls(socket_address(value), watchdog_interval(usec, pid, os.getpid()))

    @property
    def where(self) -> str:
        """The socket's address as ``$NOTIFY_SOCKET`` spells it (for the log)."""
        if isinstance(self.address, bytes):
            return "@" + self.address[1:].decode("utf-8", "replace")
        return self.address

    def send(self, fields: dict[str, str]) -> None:
        """Sends ``fields`` as one notification (a value's newlines become spaces: one
        line per field). Raises OSError when it cannot be delivered."""
        text = "\n".join(f"{name}={' '.join(value.splitlines())}" for name, value in fields.items())
        self._socket.sendto(text.encode("utf-8", "replace"), self.address)

    def close(self) -> None:
        self._socket.close()
