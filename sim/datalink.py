"""The simulated modem's cellular data path: a loopback TCP proxy that works only while registered.

``python -m sim --modem --data-proxy HOST:PORT`` runs a :class:`DataLinkProxy` next to the
simulated modem (in the modem's child process, :mod:`sim.modem_process`). It listens on a
free ``127.0.0.1`` port and forwards each TCP connection to ``HOST:PORT`` (the ingest) only
while the modem has a data connection: registered on its home network or roaming
(``+CEREG`` stat 1 or 5) with ``+CFUN: 1``. Whatever the modem does, the proxy follows:

* when the modem loses registration (coverage hole, detach during an eSIM profile switch,
  an attach that never completes, ``AT+CFUN=0|4``), every proxied connection is cut at
  once: both sockets are shut down and closed, so the client (gRPC) sees its connection
  drop and the server sees the client go away;
* while it is not registered, new connections are accepted and closed at once (counted as
  *refused*), so a client fails fast and retries instead of hanging in a connect;
* once it is registered again, new connections are forwarded.

The proxy is TCP-level: TLS passes through unchanged. It reads the modem's state
(:attr:`~sim.modem.SimulatedModem.stat`, ``cfun``) every ``poll_s`` and again on every
new connection. The modem's every loss of registration lasts at least its
``attach_delay_s`` (0.2 s in the border scenario), far longer than ``poll_s``.

:class:`DataLinkStats` counts:

* ``outages``: transitions from *data connection* to *none* seen by the proxy, whether
  or not a connection was open at the time (``outages_with_connections`` counts those
  that cut at least one);
* ``connections``: connections accepted and forwarded; ``connections_cut``: forwarded
  connections closed by an outage; ``refused``: connections closed at once because there
  was no data connection; ``upstream_failed``: connections closed because ``HOST:PORT``
  could not be reached;
* ``bytes_up`` / ``bytes_down``: bytes read for forwarding to / from ``HOST:PORT``.

Only loopback addresses are accepted on either side.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from tcu.errors import ConfigError

__all__ = ["DataLinkProxy", "DataLinkStats", "has_data_connection", "parse_loopback_target"]

log = logging.getLogger(__name__)

_CHUNK = 65536
_UPSTREAM_CONNECT_TIMEOUT_S = 5.0


class _Registration(Protocol):
    @property
    def stat(self) -> int: ...

    cfun: int


def has_data_connection(modem: _Registration) -> bool:
    """Registered home (stat 1) or roaming (stat 5) with full functionality (``+CFUN: 1``)."""
    return modem.cfun == 1 and modem.stat in (1, 5)


def parse_loopback_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` with a loopback ``HOST`` (``127.0.0.1``, ``::1``, ``localhost``)."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"expected HOST:PORT, got {text!r}", key="data_proxy")
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigError(f"the data proxy only forwards to loopback, not {host!r}", key="data_proxy")
    return host, int(port_text)


@dataclass(slots=True)
class DataLinkStats:
    outages: int = 0
    outages_with_connections: int = 0
    connections: int = 0
    connections_cut: int = 0
    refused: int = 0
    upstream_failed: int = 0
    bytes_up: int = 0
    bytes_down: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class _Pair:
    """A client connection and its upstream connection, pumped by two threads."""

    def __init__(self, proxy: DataLinkProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy, self.client, self.upstream = proxy, client, upstream
        self.closed = False
        self._threads = [
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True),
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.name = f"sim-datalink-pump[{self.client.fileno()}]"
            t.start()

    def close(self) -> None:
        """Shut down and close both sides (idempotent); the pumps end on their own."""
        self.closed = True
        _close(self.client)
        _close(self.upstream)

    def join(self, timeout_s: float) -> None:
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout_s)

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    break
                self.proxy._count_bytes(len(data), up=up)  # before sending: the peer sees no uncounted byte
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # Either side went away (or the link was cut): the connection is over for both.
            self.proxy._forget(self)


class DataLinkProxy:
    """Forwards loopback TCP connections to ``target`` while ``link_up()`` is true (module docstring).

    ``link_up`` is normally ``lambda: has_data_connection(modem)``.
    """

    def __init__(
        self,
        link_up: Callable[[], bool],
        target: tuple[str, int],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        poll_s: float = 0.01,
    ) -> None:
        parse_loopback_target(f"{target[0]}:{target[1]}")
        parse_loopback_target(f"{host}:{port or 1}")
        self.target = target
        self.host = host
        self.poll_s = poll_s
        self.stats = DataLinkStats()
        self._link_up = link_up
        self._requested_port = port
        self._lock = threading.Lock()
        self._up = False
        self._pairs: set[_Pair] = set()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.port = 0

    def start(self) -> DataLinkProxy:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.host, self._requested_port))
            listener.listen(64)
        except OSError as exc:
            listener.close()
            raise ConfigError(
                f"data proxy cannot listen on {self.host}:{self._requested_port}: {exc}", key="data_proxy"
            ) from exc
        listener.settimeout(0.2)  # so that the accept loop sees stop()
        self._listener = listener
        self.port = listener.getsockname()[1]
        with self._lock:
            self._up = self._link_up()
        self._threads = [
            threading.Thread(target=self._accept_loop, name="sim-datalink-accept", daemon=True),
            threading.Thread(target=self._watch_loop, name="sim-datalink-watch", daemon=True),
        ]
        for t in self._threads:
            t.start()
        log.info(
            "data proxy on %s:%d → %s:%d (link %s)",
            self.host,
            self.port,
            *self.target,
            "up" if self._up else "down",
        )
        return self

    def stop(self) -> None:
        """Stop accepting, close every connection and wait for the threads; idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        for t in self._threads:
            t.join(timeout=5)
        with self._lock:
            pairs = list(self._pairs)
            self._pairs.clear()
        for pair in pairs:
            pair.close()
        for pair in pairs:
            pair.join(5)

    def __enter__(self) -> DataLinkProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def snapshot(self) -> dict[str, Any]:
        """The counters (a copy) and the link state."""
        with self._lock:
            return {**self.stats.as_dict(), "up": self._up, "open": len(self._pairs)}

    # --- internals ------------------------------------------------------------------------------

    def _refresh_locked(self) -> bool:
        """Read the modem; on a loss of the data connection cut every connection. Under ``_lock``."""
        up = self._link_up()
        if up == self._up:
            return up
        self._up = up
        if up:
            log.info("data link up: forwarding to %s:%d", *self.target)
            return up
        pairs = list(self._pairs)
        self._pairs.clear()
        self.stats.outages += 1
        self.stats.connections_cut += len(pairs)
        if pairs:
            self.stats.outages_with_connections += 1
        for pair in pairs:
            pair.close()
        log.info("data link down (outage %d): cut %d connection(s)", self.stats.outages, len(pairs))
        return up

    def _watch_loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                with self._lock:
                    self._refresh_locked()
            except Exception:  # a glitch must not end the watcher; logged
                log.exception("data proxy: reading the modem failed")

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                client, _addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by stop()
            client.settimeout(None)
            with self._lock:
                up = self._refresh_locked()
                if not up:
                    self.stats.refused += 1
            if not up:
                _close(client)
                continue
            self._connect(client)

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=_UPSTREAM_CONNECT_TIMEOUT_S)
        except OSError as exc:
            log.warning("data proxy: cannot reach %s:%d: %s", *self.target, exc)
            with self._lock:
                self.stats.upstream_failed += 1
            _close(client)
            return
        upstream.settimeout(None)
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(self, client, upstream)
        with self._lock:
            # The link may have gone down while connecting: then this connection is refused too.
            if not self._refresh_locked():
                self.stats.refused += 1
                pair.close()
                return
            self._pairs.add(pair)
            self.stats.connections += 1
        pair.start()

    def _count_bytes(self, n: int, *, up: bool) -> None:
        with self._lock:
            if up:
                self.stats.bytes_up += n
            else:
                self.stats.bytes_down += n

    def _forget(self, pair: _Pair) -> None:
        with self._lock:
            self._pairs.discard(pair)
        pair.close()
