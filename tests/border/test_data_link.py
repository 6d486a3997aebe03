"""The simulated modem's cellular data path (sim.datalink): forwards only while the modem is registered.

A real TCP echo server on 127.0.0.1 stands in for the ingest; the modem is the border
scenario's :class:`~sim.modem.SimulatedModem` (in this process, and once in its child
process as ``python -m sim --modem`` runs it).
"""

from __future__ import annotations

import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Callable, Iterator

import pytest

from sim.border import build_card, build_modem
from sim.datalink import DataLinkProxy, has_data_connection, parse_loopback_target
from sim.modem import SimulatedModem
from sim.modem_process import ModemProcess
from tcu.errors import ConfigError

# A hang guard only: every wait below ends as soon as its condition holds.
_GUARD_S = 20.0


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _GUARD_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {_GUARD_S:g} s")
        time.sleep(0.01)


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: _EchoServer = self.server  # type: ignore[assignment]
        with server.lock:
            server.opened += 1
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass
        with server.lock:
            server.closed += 1


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.lock = threading.Lock()
        self.opened = 0
        self.closed = 0


@pytest.fixture
def echo() -> Iterator[_EchoServer]:
    server = _EchoServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def modem() -> Iterator[SimulatedModem]:
    with build_modem(build_card(), country="FR", attach_delay_s=0.05) as m:
        _wait_until(lambda: has_data_connection(m), "the modem to register")
        yield m


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=_GUARD_S)
    sock.settimeout(_GUARD_S)
    return sock


def _roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def _closed_by_peer(sock: socket.socket) -> bool:
    """True when the peer closed (EOF or reset); a socket timeout (the guard) raises instead."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def _at(fd: int, command: str) -> None:
    os.write(fd, command.encode() + b"\r")
    seen = b""
    deadline = time.monotonic() + _GUARD_S
    while b"OK\r\n" not in seen and b"ERROR" not in seen:
        if time.monotonic() > deadline:
            raise AssertionError(f"no answer to {command}: {seen!r}")
        try:
            seen += os.read(fd, 4096)
        except BlockingIOError:
            time.sleep(0.01)
    assert b"OK\r\n" in seen, seen


def test_forwards_while_registered_cuts_on_coverage_loss_refuses_then_recovers(
    echo: _EchoServer, modem: SimulatedModem
) -> None:
    with DataLinkProxy(lambda: has_data_connection(modem), echo.server_address[:2]) as proxy:
        first = _connect(proxy.port)
        payload = bytes(range(256)) * 512  # 128 KiB, several chunks each way
        assert _roundtrip(first, payload) == payload
        second = _connect(proxy.port)
        assert _roundtrip(second, b"ping") == b"ping"

        modem.set_coverage(False)  # the tunnel
        assert _closed_by_peer(first)
        assert _closed_by_peer(second)
        stats = proxy.snapshot()
        assert (stats["outages"], stats["outages_with_connections"], stats["connections_cut"]) == (1, 1, 2)
        assert stats["up"] is False and stats["open"] == 0
        assert stats["bytes_up"] == stats["bytes_down"] == len(payload) + len(b"ping")
        # the ingest side saw both connections go away too
        _wait_until(lambda: echo.closed == 2, "the echo server to see both connections close")

        refused = _connect(proxy.port)  # accepted and closed at once
        assert _closed_by_peer(refused)
        assert proxy.snapshot()["refused"] == 1
        assert echo.opened == 2, "nothing reached the server while unregistered"

        modem.set_coverage(True)
        _wait_until(lambda: has_data_connection(modem), "the modem to register again")
        again = _connect(proxy.port)
        assert _roundtrip(again, b"back") == b"back"
        stats = proxy.snapshot()
        assert (stats["connections"], stats["outages"], stats["refused"]) == (3, 1, 1)
        assert stats["up"] is True and stats["open"] == 1
        for sock in (first, second, refused, again):
            sock.close()


def test_cfun_0_cuts_and_cfun_1_restores(echo: _EchoServer, modem: SimulatedModem) -> None:
    fd = os.open(modem.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    try:
        with DataLinkProxy(lambda: has_data_connection(modem), echo.server_address[:2]) as proxy:
            sock = _connect(proxy.port)
            assert _roundtrip(sock, b"hello") == b"hello"
            _at(fd, "AT+CFUN=0")  # detach, as the TCU does around a profile switch
            assert _closed_by_peer(sock)
            with _connect(proxy.port) as refused:
                assert _closed_by_peer(refused)
            _at(fd, "AT+CFUN=1")
            _wait_until(lambda: has_data_connection(modem), "the modem to register after AT+CFUN=1")
            again = _connect(proxy.port)
            assert _roundtrip(again, b"hello again") == b"hello again"
            stats = proxy.snapshot()
            assert (stats["outages"], stats["connections_cut"], stats["refused"]) == (1, 1, 1)
            sock.close()
            again.close()
    finally:
        os.close(fd)


def test_a_stream_left_open_is_cut_by_the_next_outage_only(echo: _EchoServer, modem: SimulatedModem) -> None:
    """An outage without connections is counted but cuts nothing; the next one cuts the open stream."""
    with DataLinkProxy(lambda: has_data_connection(modem), echo.server_address[:2]) as proxy:
        modem.set_country("LU")  # re-attach in a new country: a short loss of registration
        _wait_until(lambda: proxy.snapshot()["outages"] == 1, "the proxy to see the outage")
        _wait_until(lambda: has_data_connection(modem), "the modem to register in LU")
        sock = _connect(proxy.port)
        assert _roundtrip(sock, b"x") == b"x"
        modem.set_coverage(False)
        assert _closed_by_peer(sock)
        stats = proxy.snapshot()
        assert (stats["outages"], stats["outages_with_connections"], stats["connections_cut"]) == (2, 1, 1)
        sock.close()


def test_in_the_modem_child_process(echo: _EchoServer) -> None:
    """``python -m sim --modem --data-proxy``: the proxy runs in the modem's child process."""
    process = ModemProcess(country="FR", attach_delay_s=0.05, data_proxy=echo.server_address[:2]).start()
    try:
        port = process.data_proxy_port
        assert isinstance(port, int)

        def link_up() -> bool:
            stats = process.data_link_stats()
            return stats is not None and bool(stats["up"])

        _wait_until(link_up, "the modem in the child to register")
        sock = _connect(port)
        assert _roundtrip(sock, b"via the child") == b"via the child"
        process.set_coverage(False)
        assert _closed_by_peer(sock)
        stats = process.data_link_stats()
        assert stats is not None
        assert (stats["outages"], stats["connections_cut"], stats["bytes_up"]) == (1, 1, 13)
        sock.close()
    finally:
        process.stop()


def test_only_loopback_targets() -> None:
    assert parse_loopback_target("127.0.0.1:50051") == ("127.0.0.1", 50051)
    assert parse_loopback_target("[::1]:7") == ("::1", 7)
    for bad in ("10.0.0.1:50051", "example.com:443", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:x"):
        with pytest.raises(ConfigError):
            parse_loopback_target(bad)


def test_sim_refuses_a_data_proxy_without_a_modem_or_off_loopback() -> None:
    for args in (["--data-proxy", "127.0.0.1:50051"], ["--modem", "--data-proxy", "192.0.2.1:50051"]):
        result = subprocess.run(
            [sys.executable, "-m", "sim", "--duration", "1", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert "--data-proxy" in result.stderr
