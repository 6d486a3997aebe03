"""The border scenario's modem and eUICC in a process of their own.

A real modem is its own piece of hardware: it answers AT commands whatever the rest of
the car is doing. In one Python process a simulated modem thread shares the GIL with the
drive, which encodes tens of thousands of CAN frames a second at high speed factors; on a
loaded two-core machine its answers then came seconds late (measured: median 25 ms,
worst 0.7 s with nothing else running), and the TCU's view of the border crossing was
minutes of simulated time behind. :class:`ModemProcess` runs :func:`sim.cellular.build_card`
and :func:`sim.cellular.build_modem` in a child process (``spawn``) and forwards the
drive's updates (country, coverage, position, NMEA bytes) over a pipe.

It offers the part of :class:`~sim.modem.SimulatedModem` that :class:`~sim.border.BorderRadio`
uses: ``port``, ``country``, ``coverage``, ``position``, ``set_country``, ``set_coverage``,
``emit_raw``, ``start`` and ``stop``. The child ends when the parent closes the pipe or
dies (the pipe reaches end of file), so a killed simulator leaves no modem behind.

With ``data_proxy=(host, port)`` the child also runs the modem's cellular data path, a
:class:`~sim.datalink.DataLinkProxy` that forwards loopback TCP connections to
``host:port`` only while the modem is registered (:attr:`ModemProcess.data_proxy_port`);
it runs here, next to the modem state, for the same reason as the modem: the drive's load
in the simulator's main process must not delay the cut when the modem loses its network.
:meth:`ModemProcess.data_link_stats` asks the child for the proxy's counters.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["ModemProcess"]

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 30.0


def _child(
    conn: Connection,
    country: str,
    attach_delay_s: float,
    data_proxy: tuple[str, int] | None = None,
    card: tuple[str | None, str | None] = (None, None),
) -> None:
    """Child process: build the card, the modem (and proxy), report them, apply updates until EOF."""
    from sim.cellular import build_card, build_modem  # imported in the child (spawn)
    from sim.datalink import DataLinkProxy, has_data_connection

    if not logging.getLogger().handlers:  # spawn: the simulator's logging set-up is not inherited
        logging.basicConfig(
            stream=sys.stderr,
            level=logging.INFO,
            format="%(asctime)s sim-modem %(levelname)s %(name)s: %(message)s",
        )

    modem = build_modem(build_card(*card), country=country, attach_delay_s=attach_delay_s).start()
    proxy: DataLinkProxy | None = None
    try:
        if data_proxy is not None:
            proxy = DataLinkProxy(lambda: has_data_connection(modem), data_proxy).start()
        conn.send(("port", modem.port, proxy.port if proxy is not None else None))
        while True:
            try:
                kind, value = conn.recv()
            except (EOFError, OSError):
                return  # the simulator is gone
            if kind == "stop":
                return
            if kind == "stats":
                conn.send(("stats", proxy.snapshot() if proxy is not None else None))
            elif kind == "country":
                modem.set_country(value)
            elif kind == "coverage":
                modem.set_coverage(value)
            elif kind == "position":
                modem.position = value
            elif kind == "raw":
                modem.emit_raw(value)
    finally:
        if proxy is not None:
            proxy.stop()
            logging.getLogger("sim.datalink").info("data proxy stopped: %s", proxy.snapshot())
        modem.stop()


class ModemProcess:
    """A :mod:`sim.border` modem + eUICC served from a child process (see the module docstring)."""

    def __init__(
        self,
        *,
        country: str = "FR",
        attach_delay_s: float = 0.2,
        data_proxy: tuple[str, int] | None = None,
        card_credentials: str | None = None,
        notification_address: str | None = None,
    ) -> None:
        self.country = country
        self._card = (card_credentials, notification_address)
        self.coverage = True
        self._position: tuple[float, float] | None = None
        self._attach_delay_s = attach_delay_s
        self._ctx = multiprocessing.get_context("spawn")
        self._conn: Connection | None = None
        self._process: Any = None
        self._port: str | None = None
        self._data_proxy = data_proxy
        self.data_proxy_port: int | None = None
        """The data path's port on 127.0.0.1 once started (``None`` without ``data_proxy``)."""
        self._lock = threading.Lock()

    @property
    def port(self) -> str:
        if self._port is None:
            raise RuntimeError("modem process not started")
        return self._port

    def start(self) -> ModemProcess:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_child,
            args=(child, self.country, self._attach_delay_s, self._data_proxy, self._card),
            name="sim-modem",
            daemon=True,
        )
        process.start()
        child.close()
        if not parent.poll(_START_TIMEOUT_S):
            process.kill()
            raise RuntimeError(f"the modem process did not start within {_START_TIMEOUT_S:g} s")
        try:
            kind, port, proxy_port = parent.recv()
        except EOFError:
            process.join(timeout=5)
            code = process.exitcode
            raise RuntimeError(f"the modem process ended while starting (exit code {code})") from None
        if kind != "port":
            raise RuntimeError(f"the modem process said {kind!r} instead of its port")
        self._conn, self._process, self._port = parent, process, port
        self.data_proxy_port = proxy_port
        log.info("modem process %d on %s", process.pid, port)
        return self

    def data_link_stats(self, timeout_s: float = 5.0) -> dict[str, Any] | None:
        """The data proxy's counters (:class:`~sim.datalink.DataLinkStats`, plus ``up`` and ``open``).

        ``None`` without a data proxy or when the child does not answer within ``timeout_s``.
        """
        with self._lock:
            conn = self._conn
            if conn is None or self._data_proxy is None:
                return None
            try:
                conn.send(("stats", None))
                if not conn.poll(timeout_s):
                    log.warning("modem process: no data link stats within %g s", timeout_s)
                    return None
                kind, value = conn.recv()
            except (EOFError, OSError) as exc:
                log.warning("modem process gone: %s", exc)
                return None
        if kind != "stats" or not isinstance(value, dict):
            return None
        return value

    def _send(self, kind: str, value: object) -> None:
        with self._lock:
            if self._conn is None:
                return
            try:
                self._conn.send((kind, value))
            except (BrokenPipeError, OSError) as exc:
                log.warning("modem process gone: %s", exc)
                self._conn = None

    def set_country(self, country: str) -> None:
        self.country = country
        self._send("country", country)

    def set_coverage(self, covered: bool) -> None:
        self.coverage = covered
        self._send("coverage", covered)

    @property
    def position(self) -> tuple[float, float] | None:
        return self._position

    @position.setter
    def position(self, value: tuple[float, float]) -> None:
        self._position = value
        self._send("position", value)

    def emit_raw(self, data: bytes) -> None:
        self._send("raw", data)

    def stop(self) -> None:
        """Stop the child and wait for it; idempotent."""
        self._send("stop", None)
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        process, self._process = self._process, None
        if process is not None:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                with contextlib.suppress(Exception):
                    process.join(timeout=5)
