"""The socketcand server, checked with python-can's own socketcand client."""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Iterator

import can
import pytest

from sim import Drive, DriveConfig, SocketcandConfig, SocketcandServer
from sim.socketcand import format_frame
from tcu.errors import BusError


@pytest.fixture
def server() -> Iterator[SocketcandServer]:
    srv = SocketcandServer(SocketcandConfig(channel="can0", settle_s=0.1))
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


def test_python_can_client_gets_every_frame_in_order(server: SocketcandServer) -> None:
    bus = can.Bus(interface="socketcand", host="127.0.0.1", port=server.port, channel="can0")
    try:
        assert server.wait_for_client(5.0)
        drive = Drive(DriveConfig(duration_s=10, speed=None, seed=8))
        errors: list[BaseException] = []

        def feed() -> None:
            try:
                for batch in drive.batches():
                    server.send_frames(batch)
            except BaseException as exc:  # reported below
                errors.append(exc)

        feeder = threading.Thread(target=feed)
        feeder.start()
        got: list[can.Message] = []
        while len(got) < 4200:
            msg = bus.recv(5.0)
            assert msg is not None, f"timed out after {len(got)} frames"
            got.append(msg)
        feeder.join(10)
        assert not errors
        assert bus.recv(0.3) is None  # nothing more
        gt = drive.ground_truth()
        assert gt.frames == len(got) == 4200
        for row, msg in enumerate(got):
            assert round(msg.timestamp * 1e6) == gt.frame_t_us[row]
            assert msg.arbitration_id == gt.frame_arbitration_id[row]
            assert msg.is_extended_id == (msg.arbitration_id > 0x7FF)
            assert bytes(msg.data) == bytes(gt.frame_data[row, : gt.frame_dlc[row]])
        # the client's own sends are recorded, not echoed
        bus.send(can.Message(arbitration_id=0x7DF, data=[2, 1, 0x0D], is_extended_id=False))
        bus.send(can.Message(arbitration_id=0x18DAF110, data=[1, 2, 3, 4, 5, 6, 7, 8], is_extended_id=True))
        deadline = time.monotonic() + 5
        while server.received_count < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        first, second = server.received
        assert (first.arbitration_id, bytes(first.data), first.is_extended_id) == (
            0x7DF,
            b"\x02\x01\x0d",
            False,
        )
        assert (second.arbitration_id, second.is_extended_id) == (0x18DAF110, True)
        assert bytes(second.data) == bytes(range(1, 9))
        assert bus.recv(0.2) is None
    finally:
        bus.shutdown()


def test_handshake_waits_for_the_client_and_checks_the_channel() -> None:
    with (
        SocketcandServer(SocketcandConfig(settle_s=0.05)) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock,
    ):
        assert sock.recv(256) == b"< hi >"
        assert select.select([sock], [], [], 0.3)[0] == []  # nothing until the client speaks
        sock.sendall(b"< open vcan9 >")
        assert sock.recv(256) == b"< error unknown bus >"
        with pytest.raises(BusError, match="no socketcand client"):
            server.send_frames([can.Message(arbitration_id=1, data=b"\x01")])
        sock.sendall(b"< open can0 >")
        assert sock.recv(256) == b"< ok >"
        assert not server.wait_for_client(0.2)
        sock.sendall(b"< rawmode >")
        assert sock.recv(256) == b"< ok >"
        assert server.wait_for_client(5.0)
        frame = can.Message(timestamp=12.5, arbitration_id=0x1A0, data=b"\xab\x01", is_extended_id=False)
        assert server.send_frames([frame, frame]) == 2
        expected = b"< frame 1A0 12.500000 AB01 >" * 2
        got = b""
        while len(got) < len(expected):
            chunk = sock.recv(4096)
            assert chunk
            got += chunk
        assert got == expected


def test_reads_that_split_messages_lose_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """python-can's client reads 1024 bytes at a time; messages cut by a read are kept."""
    with SocketcandServer(SocketcandConfig(settle_s=0.05)) as server:
        bus = can.Bus(interface="socketcand", host="127.0.0.1", port=server.port, channel="can0")
        try:
            assert server.wait_for_client(5.0)
            drive = Drive(DriveConfig(duration_s=5, speed=None, seed=8))
            feeder = threading.Thread(target=lambda: [server.send_frames(b) for b in drive.batches()])
            with caplog.at_level(logging.WARNING, logger="can"):
                feeder.start()
                n = 0
                while bus.recv(2.0) is not None:
                    n += 1
                feeder.join(10)
            assert n == 2100
            problems = [r.getMessage() for r in caplog.records if r.name.startswith("can")]
            assert not [p for p in problems if "discard" in p.lower() or "invalid" in p.lower()]
        finally:
            bus.shutdown()


def test_probes_and_failed_handshakes_do_not_use_up_the_server(server: SocketcandServer) -> None:
    socket.create_connection(("127.0.0.1", server.port), timeout=5).close()  # a port probe
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        assert sock.recv(256) == b"< hi >"
        sock.sendall(b"< open nope >")
        assert sock.recv(256) == b"< error unknown bus >"
    assert not server.wait_for_client(0.2)
    bus = can.Bus(interface="socketcand", host="127.0.0.1", port=server.port, channel="can0")
    try:
        assert server.wait_for_client(5.0)
        # a second client is refused: the connection closes instead of saying '< hi >'
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as second:
            assert second.recv(256) == b""
        frame = can.Message(timestamp=3.25, arbitration_id=0x123, data=b"\x01\x02", is_extended_id=False)
        server.send_frames([frame])
        got = bus.recv(5.0)
        assert got is not None
        assert (got.timestamp, got.arbitration_id, bytes(got.data)) == (3.25, 0x123, b"\x01\x02")
    finally:
        bus.shutdown()


def test_format_frame() -> None:
    std = can.Message(
        timestamp=1_767_261_600.000001,
        arbitration_id=0x0A0,
        data=bytes([0, 0x1F, 0xFF]),
        is_extended_id=False,
    )
    ext = can.Message(timestamp=1_767_261_600.5, arbitration_id=0x18FF1001, is_extended_id=True, data=b"\x01")
    assert format_frame(std) == "< frame 0A0 1767261600.000001 001FFF >"
    assert format_frame(ext) == "< frame 18FF1001 1767261600.500000 01 >"
