"""A socketcand server on loopback, speaking what python-can's ``socketcand`` client expects.

It serves one client: the first connection that completes the handshake.
A connection that fails the handshake (a port probe, a wrong channel followed
by a close) is closed and the server keeps waiting; connections after the
served client are closed at once. With ``SocketcandConfig(reconnect=True)`` it
serves successive clients instead: a client that completes the handshake
replaces the current one (whose connection is closed), and when the current
client goes away :meth:`SocketcandServer.wait_for_client` blocks again until the
next one has opened the channel; :attr:`SocketcandServer.clients` counts them.

Protocol (rawmode only):

1. on connect the server sends ``< hi >`` and then waits for the client;
2. ``< open CHANNEL >`` → ``< ok >`` (another channel → ``< error unknown bus >``);
3. ``< rawmode >`` → ``< ok >``; after a short pause (``settle_s``, so that the
   client's single ``recv`` of the reply cannot also swallow frames) the
   server streams ``< frame ID SECS.USECS HEXDATA >`` (ID: 3 hex digits for
   standard, 8 for extended ids; HEXDATA contiguous uppercase hex).

Messages are written back to back, without padding. python-can's client reads
1024 bytes per ``recv`` and logs "Got incomplete message" each time a read ends
inside a message (harmless: it keeps the part and waits for the rest; the agent
filters that line). Padding blocks to whole messages, tried once to silence it,
loses frames: when a read ends inside a padded block, the client holds more than
200 characters of spaces plus a partial message, which it discards whole.

Frames are written with blocking ``sendall``, so a slow reader slows the
simulator down through TCP flow control and no frame is ever dropped.
``< send ID DLC B0 B1 ... >`` from the client is parsed and kept in
:attr:`SocketcandServer.received` (bounded: the oldest are dropped once
``max_received`` is reached; :attr:`SocketcandServer.received_count` counts all).
Other commands are logged at DEBUG and ignored.

python-can's client spins on a closed connection, so callers should keep the
server open until the client has gone (:meth:`SocketcandServer.close` ends it).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import can

from tcu.errors import BusError, ClosedResourceError

__all__ = ["SocketcandConfig", "SocketcandServer", "format_frame"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SocketcandConfig:
    host: str = "127.0.0.1"
    port: int = 0
    channel: str = "can0"
    settle_s: float = 0.2
    handshake_timeout_s: float = 10.0
    max_received: int = 10_000
    reconnect: bool = False


def format_frame(msg: can.Message) -> str:
    """``< frame ID SECS.USECS HEXDATA >`` for one frame; the timestamp is rounded to whole µs."""
    t_us = round(msg.timestamp * 1e6)
    secs, usecs = divmod(t_us, 1_000_000)
    if msg.is_extended_id:
        ident = f"{msg.arbitration_id & 0x1FFFFFFF:08X}"
    else:
        ident = f"{msg.arbitration_id & 0x7FF:03X}"
    return f"< frame {ident} {secs}.{usecs:06d} {bytes(msg.data).hex().upper()} >"


def _parse_send(body: list[str]) -> can.Message:
    """``send ID DLC B0 ...`` (tokens without the angle brackets) → message."""
    ident, dlc = body[1], int(body[2], 16)
    data = bytes(int(b, 16) for b in body[3 : 3 + dlc])
    return can.Message(
        arbitration_id=int(ident, 16),
        is_extended_id=len(ident) > 3,
        data=data,
        dlc=dlc,
        is_rx=False,
        check=False,
    )


class _Conn:
    """One client connection and its unparsed input."""

    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock, self.number, self.buf = sock, number, ""


class SocketcandServer:
    """Serves one socketcand client (or successive ones, see ``reconnect``).

    ``start()`` binds and accepts in a background thread.
    """

    def __init__(self, config: SocketcandConfig | None = None) -> None:
        self.config = config or SocketcandConfig()
        self._listener: socket.socket | None = None
        self._conn: _Conn | None = None
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._closed = threading.Event()
        self._client_gone = threading.Event()
        self._threads: list[threading.Thread] = []
        self.clients = 0  # clients that completed the handshake
        self.received: deque[can.Message] = deque(maxlen=self.config.max_received)
        self.received_count = 0
        self.port = 0

    # ----------------------------------------------------------- lifecycle
    def start(self) -> int:
        """Bind and listen; return the bound port. The handshake runs in the background."""
        if self._listener is not None:
            raise BusError("socketcand server already started")
        try:
            sock = socket.create_server((self.config.host, self.config.port), backlog=1)
        except OSError as exc:
            raise BusError(f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror}") from exc
        self._listener = sock
        self.port = sock.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, name=f"socketcand[{self.port}].accept", daemon=True)
        self._threads.append(t)
        t.start()
        log.info("socketcand server on %s:%d channel %s", self.config.host, self.port, self.config.channel)
        return self.port

    def wait_for_client(self, timeout_s: float | None = None) -> bool:
        """Block until a client has opened the channel in rawmode; False on timeout or close.

        With ``reconnect``, "a client" is the current one: after it went away this
        waits for the next.
        """
        if not self._ready.wait(timeout_s):
            return False
        return not self._closed.is_set()

    @property
    def client_connected(self) -> bool:
        return self._ready.is_set() and not self._closed.is_set() and not self._client_gone.is_set()

    def close(self) -> None:
        """Close the client connection and the listener (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._ready.set()
        for sock in (self._conn.sock if self._conn else None, self._listener):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=2.0)

    def __enter__(self) -> SocketcandServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ sending
    def send_frames(self, frames: Iterable[can.Message]) -> int:
        """Write frames to the client (blocking: TCP flow control paces the caller). Returns the count."""
        if self._closed.is_set():
            raise ClosedResourceError("socketcand server is closed")
        conn = self._conn
        if not self._ready.is_set() or conn is None:
            raise BusError("no socketcand client in rawmode yet")
        lines = [format_frame(m) for m in frames]
        if not lines:
            return 0
        text = "".join(lines)
        try:
            conn.sock.sendall(text.encode("ascii"))
        except OSError as exc:
            self._client_left(conn)
            raise BusError(f"socketcand client went away: {exc}") from exc
        return len(lines)

    # ------------------------------------------------------------ internals
    def _client_left(self, conn: _Conn) -> None:
        """Mark ``conn`` gone if it is still the current client (a replaced one is not)."""
        with self._lock:
            if self._conn is not conn:
                return
            self._client_gone.set()
            if self.config.reconnect and not self._closed.is_set():
                self._ready.clear()

    @staticmethod
    def _send(conn: _Conn, text: str) -> None:
        conn.sock.sendall(text.encode("ascii"))

    @staticmethod
    def _next_command(conn: _Conn) -> list[str] | None:
        """Next ``< ... >`` command as tokens, or None when the client closed."""
        while True:
            start = conn.buf.find("<")
            end = conn.buf.find(">", start + 1) if start >= 0 else -1
            if start >= 0 and end >= 0:
                body = conn.buf[start + 1 : end].split()
                conn.buf = conn.buf[end + 1 :]
                return body
            chunk = conn.sock.recv(4096)
            if not chunk:
                return None
            conn.buf += chunk.decode("ascii", errors="replace")

    def _accept_loop(self) -> None:
        """Accept until one client completes the handshake; refuse every later client.

        With ``reconnect`` every client that completes the handshake becomes the current one.
        """
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                sock, peer = self._listener.accept()
            except OSError:
                return  # the listener was closed
            if self.clients and not self.config.reconnect:
                log.warning("socketcand: refusing %s:%d, this server serves one client", peer[0], peer[1])
                sock.close()
                continue
            log.info("socketcand client from %s:%d", peer[0], peer[1])
            conn = _Conn(sock, self.clients + 1)
            if not self._handshake(conn):
                sock.close()
                continue
            with self._lock:
                if self._closed.is_set():
                    sock.close()
                    return
                old, self._conn = self._conn, conn
                self.clients = conn.number
                self._client_gone.clear()
                self._ready.set()
            if old is not None:
                log.info("socketcand: client %d replaces client %d", conn.number, old.number)
                with contextlib.suppress(OSError):
                    old.sock.shutdown(socket.SHUT_RDWR)
                old.sock.close()
            log.info("socketcand client %d opened %s in rawmode", conn.number, self.config.channel)
            reader = threading.Thread(
                target=self._read_loop,
                args=(conn,),
                name=f"socketcand[{self.port}].read[{conn.number}]",
                daemon=True,
            )
            self._threads.append(reader)
            reader.start()

    def _handshake(self, conn: _Conn) -> bool:
        """``< hi >``, ``< open CHANNEL >``, ``< rawmode >``; False (logged) if the client failed it.

        A client that goes away before its first command is a port probe (the agent checks
        that the server listens before python-can's client connects): logged at DEBUG only.
        """
        commands = 0
        try:
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sock.settimeout(self.config.handshake_timeout_s)
            self._send(conn, "< hi >")
            while True:
                cmd = self._next_command(conn)
                if cmd is None:
                    raise BusError("client closed the connection during the handshake")
                commands += 1
                if cmd[:1] == ["open"] and len(cmd) == 2:
                    if cmd[1] != self.config.channel:
                        self._send(conn, "< error unknown bus >")
                        continue
                    self._send(conn, "< ok >")
                elif cmd == ["rawmode"]:
                    self._send(conn, "< ok >")
                    break
                else:
                    log.debug("socketcand: ignoring %r during handshake", cmd)
            conn.sock.settimeout(None)
            # the client reads the rawmode '< ok >' with one recv: let it arrive alone
            self._closed.wait(self.config.settle_s)
        except (OSError, BusError) as exc:
            if commands == 0 and not isinstance(exc, TimeoutError):
                log.debug("socketcand: client %d left before any command (a probe): %s", conn.number, exc)
            elif not self._closed.is_set():
                log.warning("socketcand handshake failed, waiting for another client: %s", exc)
            return False
        return not self._closed.is_set()

    def _read_loop(self, conn: _Conn) -> None:
        try:
            while not self._closed.is_set():
                cmd = self._next_command(conn)
                if cmd is None:
                    if not self._closed.is_set():
                        log.info("socketcand client %d closed the connection", conn.number)
                    break
                if cmd[:1] == ["send"] and len(cmd) >= 3:
                    try:
                        msg = _parse_send(cmd)
                    except ValueError:
                        log.warning("socketcand: malformed send command %r", cmd)
                        continue
                    self.received.append(msg)
                    self.received_count += 1
                else:
                    log.debug("socketcand: ignoring %r", cmd)
        except OSError as exc:
            if not self._closed.is_set():
                log.info("socketcand client %d connection broke: %s", conn.number, exc)
        self._client_left(conn)
