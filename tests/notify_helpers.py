"""A unix datagram socket standing in for systemd's notify socket (the tests own it)."""

from __future__ import annotations

import socket
import threading
import time


class NotifySocket:
    """A unix datagram socket (abstract namespace or a path) and every datagram it got, timed."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def lines(self, key: str, since: float = 0.0) -> list[str]:
        return [
            line
            for t, text in list(self.messages)
            if t >= since
            for line in text.split("\n")
            if line.startswith(f"{key}=")
        ]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
