"""The bulk socketcand reader against the simulator's server, checked against python-can's client."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import can
import numpy as np
import pytest
from loopback import next_frames

from sim import Drive, DriveConfig, SocketcandConfig, SocketcandServer
from tcu.can.bus import BusReader, open_bus
from tcu.can.collector import FrameCollector
from tcu.can.socketcand import SocketcandBus
from tcu.config import BusConfig
from tcu.errors import BusError
from tcu.frames import FrameBatch, concat_frames


def _extra() -> list[can.Message]:
    """Frames the drive has none of: extended ids, short and empty payloads."""
    return [
        can.Message(
            timestamp=1_700_000_000.000001, arbitration_id=0x18FEF100, is_extended_id=True, data=b"\x01\x02"
        ),
        can.Message(timestamp=1_700_000_000.5, arbitration_id=0x7FF, is_extended_id=False, data=b""),
        can.Message(
            timestamp=1_700_000_001.25, arbitration_id=0x001, is_extended_id=False, data=bytes(range(5))
        ),
        can.Message(timestamp=1_700_000_002.0, arbitration_id=0x5, is_extended_id=True, data=bytes(8)),
    ]


def _frames() -> list[can.Message]:
    drive = Drive(DriveConfig(duration_s=5, speed=None, seed=3))
    out: list[can.Message] = []
    for batch in drive.batches():
        out.extend(batch)
    extra = _extra()
    return out[:100] + extra + out[100:] + extra


@pytest.fixture
def server() -> Iterator[SocketcandServer]:
    srv = SocketcandServer(SocketcandConfig(channel="can0", settle_s=0.05))
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


def _feed(server: SocketcandServer, frames: list[can.Message], chunk: int = 37) -> threading.Thread:
    def run() -> None:
        for i in range(0, len(frames), chunk):
            server.send_frames(frames[i : i + chunk])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _read_bulk(bus: SocketcandBus, n: int, max_frames: int = 512) -> FrameBatch:
    got: list[FrameBatch] = []
    count = 0
    deadline = time.monotonic() + 20
    while count < n:
        assert time.monotonic() < deadline, f"timed out after {count} frames"
        batch = bus.recv_frames(0.5, max_frames)
        if batch is not None:
            assert len(batch) <= max_frames
            got.append(batch)
            count += len(batch)
    return concat_frames(got)


def test_bulk_reader_gets_the_same_frames_as_python_can(server: SocketcandServer) -> None:
    frames = _frames()
    # python-can's client first, on a second server fed the same frames.
    with SocketcandServer(SocketcandConfig(channel="can0", settle_s=0.05)) as ref_server:
        ref = can.Bus(interface="socketcand", host="127.0.0.1", port=ref_server.port, channel="can0")
        try:
            assert ref_server.wait_for_client(5.0)
            feeder = _feed(ref_server, frames)
            expected: list[can.Message] = []
            while len(expected) < len(frames):
                msg = ref.recv(5.0)
                assert msg is not None, f"python-can timed out after {len(expected)} frames"
                expected.append(msg)
            feeder.join(10)
        finally:
            ref.shutdown()
    bus = SocketcandBus("can0", host="127.0.0.1", port=server.port)
    try:
        assert server.wait_for_client(5.0)
        feeder = _feed(server, frames)
        got = _read_bulk(bus, len(frames), max_frames=300)
        feeder.join(10)
        assert bus.recv_frames(0.2) is None  # nothing more
    finally:
        bus.shutdown()
    assert len(got) == len(expected) == len(frames)
    assert not got.is_error.any()
    assert bus.ignored == 0
    for row, msg in enumerate(expected):
        assert int(got.t_ns[row]) == round(msg.timestamp * 1e6) * 1000, row
        assert int(got.arbitration_id[row]) == msg.arbitration_id, row
        assert bool(got.is_extended[row]) == msg.is_extended_id, row
        assert int(got.dlc[row]) == msg.dlc, row
        assert got.payload(row) == bytes(msg.data), row
    # Short payloads are zero-padded to the batch's width.
    short = np.flatnonzero(got.dlc < 8)
    assert short.size and not got.data[short[0], got.dlc[short[0]] :].any()


def test_error_and_unknown_messages_are_counted_not_decoded(server: SocketcandServer) -> None:
    bus = SocketcandBus("can0", host="127.0.0.1", port=server.port)
    try:
        assert server.wait_for_client(5.0)
        conn = server._conn
        assert conn is not None
        conn.sock.sendall(
            b"< frame 123 1.000001 0102 >< error 1FFFFFFF 2.5 >< echo >< frame 124 3.000000 AA >"
        )
        got = _read_bulk(bus, 3)
    finally:
        bus.shutdown()
    assert got.is_error.tolist() == [False, False, True]
    assert got.arbitration_id.tolist() == [0x123, 0x124, 0x1FFFFFFF]
    assert bus.ignored == 1


def test_peer_close_raises_at_once(server: SocketcandServer) -> None:
    bus = SocketcandBus("can0", host="127.0.0.1", port=server.port)
    try:
        assert server.wait_for_client(5.0)
        server.close()
        with pytest.raises(can.CanError, match="closed the connection"):
            for _ in range(50):
                bus.recv_frames(0.1)
    finally:
        bus.shutdown()


def test_frames_read_before_the_close_are_handed_out_first(server: SocketcandServer) -> None:
    bus = SocketcandBus("can0", host="127.0.0.1", port=server.port)
    try:
        assert server.wait_for_client(5.0)
        server.send_frames(_extra())
        server.close()
        time.sleep(0.2)  # frames and end of file are both in the socket now
        got = bus.recv_frames(0.5)
        assert got is not None and len(got) == 4
        with pytest.raises(can.CanError, match="closed the connection"):
            bus.recv_frames(0.1)
    finally:
        bus.shutdown()


def test_garbage_is_a_protocol_error_not_a_silent_discard(server: SocketcandServer) -> None:
    bus = SocketcandBus("can0", host="127.0.0.1", port=server.port)
    try:
        assert server.wait_for_client(5.0)
        conn = server._conn
        assert conn is not None
        conn.sock.sendall(b"x" * 2000)
        with pytest.raises(can.CanError, match="without '>'"):
            for _ in range(50):
                bus.recv_frames(0.1)
    finally:
        bus.shutdown()


def test_open_bus_picks_the_reader_and_refuses_an_unknown_one(server: SocketcandServer) -> None:
    opts = {"host": "127.0.0.1", "port": server.port}
    bulk = open_bus(BusConfig(name="b", interface="socketcand", channel="can0", dbc=(), options=opts))
    try:
        assert isinstance(bulk, SocketcandBus)
    finally:
        bulk.shutdown()
    with pytest.raises(BusError, match="option reader = 'fast'"):
        open_bus(
            BusConfig(
                name="b", interface="socketcand", channel="can0", dbc=(), options={**opts, "reader": "fast"}
            )
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_bus_reader_reopens_the_bulk_bus_after_the_server_dropped_it() -> None:
    srv = SocketcandServer(SocketcandConfig(channel="can0", settle_s=0.05, reconnect=True))
    srv.start()
    config = BusConfig(
        name="pt",
        interface="socketcand",
        channel="can0",
        dbc=(),
        options={"host": "127.0.0.1", "port": srv.port},
        retry_initial_s=0.05,
        retry_max_s=0.2,
    )
    reader = BusReader(config, batch_ms=20)
    out = FrameCollector(["pt"])
    task = asyncio.create_task(reader.run(out))
    first, second = _extra()[:2], _extra()[2:]
    try:
        assert await asyncio.to_thread(srv.wait_for_client, 5.0)
        srv.send_frames(first)
        got = [await next_frames(out, 5.0)]
        while sum(len(b) for b in got if b is not None) < 2:
            got.append(await next_frames(out, 5.0))
        conn = srv._conn
        assert conn is not None
        conn.sock.shutdown(socket.SHUT_RDWR)  # the server drops the client
        deadline = time.monotonic() + 10
        while srv.clients < 2:
            assert time.monotonic() < deadline, "the reader did not reconnect"
            await asyncio.sleep(0.02)
        assert await asyncio.to_thread(srv.wait_for_client, 5.0)
        srv.send_frames(second)
        while sum(len(b) for b in got if b is not None) < 4:
            got.append(await next_frames(out, 5.0))
    finally:
        reader.stop()
        await asyncio.wait_for(task, 10)
        srv.close()
    frames = [b for b in got if b is not None]
    assert sum(len(b) for b in frames) == 4
    assert reader.stats.receive_failures == 1
    assert reader.stats.reopened == 1
    assert "closed the connection" in reader.stats.last_error
