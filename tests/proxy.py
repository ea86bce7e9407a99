"""A real TCP proxy for the tests, in front of a real server: it forwards every byte both
ways, and can lose the line right after a request (the server gets the request and
answers, the client never sees the answer: a reply lost on the network), or hold a
request on the way past its client's timeout (a packet late on the network)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class ReplyLosingProxy:
    """Listens on 127.0.0.1 (``port``) and forwards to ``target_port``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lose_after: bytes | None = None
        self._delay: tuple[bytes, float] | None = None
        self._lock = threading.Lock()
        self.lost = 0
        """How many connections it cut after a request (each one's answer lost)."""
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_reply_to(self, marker: bytes) -> None:
        """The next request holding ``marker`` reaches the server; its answer is lost."""
        with self._lock:
            self._lose_after = marker

    def delay_request(self, marker: bytes, seconds: float) -> None:
        """The next request holding ``marker`` is held ``seconds`` on the way, then reaches
        the server even if its client gave up meanwhile (a packet late on the network)."""
        with self._lock:
            self._delay = (marker, seconds)

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            cut = threading.Event()
            threading.Thread(target=self._up, args=(client, server, cut), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, cut), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, cut: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                with self._lock:
                    if self._lose_after is not None and self._lose_after in data:
                        self._lose_after = None
                        cut.set()  # before the server can answer
                    delay = None
                    if self._delay is not None and self._delay[0] in data:
                        delay, self._delay = self._delay[1], None
                if delay is not None:
                    cut.set()  # its answer goes nowhere: the client gave up
                    threading.Timer(delay, self._late, args=(server, data)).start()
                    return
                server.sendall(data)
                if cut.is_set():
                    time.sleep(0.1)  # the server has it, and answers into the void
                    self.lost += 1
                    for end in (client, server):
                        with contextlib.suppress(OSError):
                            end.shutdown(socket.SHUT_RDWR)
                        end.close()
                    return

    @staticmethod
    def _late(server: socket.socket, data: bytes) -> None:
        with contextlib.suppress(OSError):
            server.sendall(data)
            time.sleep(0.2)  # the server has it before the line goes
            server.close()

    def _down(self, server: socket.socket, client: socket.socket, cut: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while (data := server.recv(65536)) and not cut.is_set():
                client.sendall(data)
