"""The SocketCAN bulk reader (recvmmsg, kernel timestamps) on AF_UNIX datagram socket pairs.

This machine has no vcan, so the frames travel over an ``AF_UNIX`` ``SOCK_DGRAM`` pair as the
bytes a CAN_RAW socket delivers (``struct can_frame`` / ``struct canfd_frame``, built by
python-can's own ``build_can_frame``); the kernel timestamps them (``SO_TIMESTAMPNS`` works on
AF_UNIX). Opening and binding a real AF_CAN socket is not tested here.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Iterator

import can
import numpy as np
import pytest
from can.interfaces.socketcan.socketcan import build_can_frame
from loopback import next_frames

from tcu.can.bus import BusReader
from tcu.can.collector import FrameCollector
from tcu.can.socketcan import BATCH, SCM_TIMESTAMPNS, SO_RXQ_OVFL, SocketcanBus, parse_control
from tcu.config import BusConfig
from tcu.errors import BusError
from tcu.frames import concat_frames


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, SocketcanBus]]:
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    bus = SocketcanBus.from_socket(receiver, "can0")
    try:
        yield sender, bus
    finally:
        bus.shutdown()
        sender.close()


STD = {"is_extended_id": False}
MESSAGES = [
    can.Message(arbitration_id=0x123, data=bytes(range(8)), **STD),
    can.Message(arbitration_id=0x1ABCDEF, is_extended_id=True, data=b"\x01\x02\x03"),
    can.Message(arbitration_id=0x55, is_fd=True, bitrate_switch=True, data=bytes(range(12)), **STD),
    can.Message(arbitration_id=0x18FEF100, is_extended_id=True, is_fd=True, data=bytes(range(64))),
    can.Message(arbitration_id=0x7FF, is_remote_frame=True, dlc=8, **STD),
    can.Message(arbitration_id=0x004, is_error_frame=True, data=bytes(8), **STD),
    can.Message(arbitration_id=0x100, data=b"", **STD),
]


def test_frames_parsed_with_flags_lengths_and_kernel_timestamps(
    pair: tuple[socket.socket, SocketcanBus],
) -> None:
    sender, bus = pair
    before = time.time_ns()
    for msg in MESSAGES:
        sender.send(build_can_frame(msg))
    after = time.time_ns()
    got = bus.poll_frames()
    assert got is not None and len(got) == len(MESSAGES)
    assert got.channels == ("can0",)
    assert got.arbitration_id.tolist() == [0x123, 0x1ABCDEF, 0x55, 0x18FEF100, 0x7FF, 0x004, 0x100]
    assert got.is_extended.tolist() == [False, True, False, True, False, True, False]
    assert got.is_fd.tolist() == [False, False, True, True, False, False, False]
    assert got.bitrate_switch.tolist() == [False, False, True, False, False, False, False]
    assert got.is_remote.tolist() == [False, False, False, False, True, False, False]
    assert got.is_error.tolist() == [False, False, False, False, False, True, False]
    assert got.dlc.tolist() == [8, 3, 12, 64, 8, 8, 0]
    assert got.data.shape == (7, 64)
    for row, msg in enumerate(MESSAGES[:4]):
        assert got.payload(row) == bytes(msg.data)
    assert not got.data[1, 3:].any() and not got.data[0, 8:].any()  # zero past each frame's length
    # Kernel receive times (SO_TIMESTAMPNS), in send order, within the send window.
    assert bus.untimestamped == 0
    assert before <= int(got.t_ns[0]) and int(got.t_ns[-1]) <= after + 1_000_000_000
    assert (np.diff(got.t_ns) >= 0).all()
    assert bus.poll_frames() is None


def test_many_frames_per_call_and_the_socket_drained_in_one_poll(
    pair: tuple[socket.socket, SocketcanBus],
) -> None:
    sender, bus = pair
    n = 3 * BATCH + 17
    for i in range(n):
        sender.send(
            build_can_frame(can.Message(arbitration_id=i & 0x7FF, data=i.to_bytes(4, "little"), **STD))
        )
    got = bus.poll_frames()
    assert got is not None and len(got) == n
    assert got.arbitration_id.tolist() == [i & 0x7FF for i in range(n)]
    assert [int.from_bytes(got.payload(i), "little") for i in range(n)] == list(range(n))
    assert got.data.shape == (n, 8)  # no CAN FD frame: 8 bytes wide
    assert bus.calls == 4  # 256 + 256 + 256 + 17: ceil(n / BATCH) system calls for n frames


def test_a_datagram_that_is_no_can_frame_is_counted_and_skipped(
    pair: tuple[socket.socket, SocketcanBus],
) -> None:
    sender, bus = pair
    sender.send(build_can_frame(can.Message(arbitration_id=1, data=b"a", **STD)))
    sender.send(b"not a frame")
    sender.send(build_can_frame(can.Message(arbitration_id=2, data=b"b", **STD)))
    got = bus.poll_frames()
    assert got is not None and got.arbitration_id.tolist() == [1, 2]
    assert bus.malformed == 1


def _cmsg(level: int, kind: int, body: bytes) -> bytes:
    header = struct.pack("@NiI", 16 + len(body), level, kind)
    record = header + body
    return record + b"\0" * (-len(record) % 8)


def test_ancillary_data_timestamp_and_kernel_drop_counter() -> None:
    """SO_RXQ_OVFL is not sent on AF_UNIX: the parser is checked on crafted ancillary data."""
    stamp = _cmsg(socket.SOL_SOCKET, SCM_TIMESTAMPNS, struct.pack("@qq", 1_700_000_000, 123_456_789))
    drops = _cmsg(socket.SOL_SOCKET, SO_RXQ_OVFL, struct.pack("@I", 42))
    other = _cmsg(socket.SOL_SOCKET, 99, b"\1\2\3\4")
    assert parse_control(stamp + drops) == (1_700_000_000_123_456_789, 42)
    assert parse_control(other + drops + stamp) == (1_700_000_000_123_456_789, 42)
    assert parse_control(b"") == (None, None)
    assert parse_control(drops) == (None, 42)
    assert parse_control(stamp[:20]) == (None, None)  # truncated: ignored, not misread


def test_without_kernel_timestamps_frames_get_the_receive_time_counted(
    pair: tuple[socket.socket, SocketcanBus],
) -> None:
    sender, bus = pair
    bus._sock.setsockopt(socket.SOL_SOCKET, 35, 0)  # SO_TIMESTAMPNS off
    before = time.time_ns()
    sender.send(build_can_frame(can.Message(arbitration_id=1, data=b"a", **STD)))
    got = bus.poll_frames()
    assert got is not None and int(got.t_ns[0]) >= before
    assert bus.untimestamped == 1


async def test_bus_reader_drains_the_socket_once_per_tick_into_the_collector(
    pair: tuple[socket.socket, SocketcanBus],
) -> None:
    sender, bus = pair
    config = BusConfig(name="can0", interface="socketcan", channel="vcan0", dbc=())
    opened: list[SocketcanBus] = []

    def opener(_: BusConfig) -> can.BusABC:
        opened.append(bus)
        return bus

    reader = BusReader(config, tick_ms=20, opener=opener)
    out = FrameCollector(["can0"])
    task = asyncio.create_task(reader.run(out))
    try:
        for msg in MESSAGES:
            sender.send(build_can_frame(msg))
        parts = [await next_frames(out, 5.0)]
        while sum(len(p) for p in parts) < 5:  # the data frames, possibly over two ticks
            parts.append(await next_frames(out, 5.0))
        got = concat_frames(parts)
        # Stop: what arrived after the last tick is still delivered (one last drain).
        sender.send(build_can_frame(can.Message(arbitration_id=0x321, data=b"late", **STD)))
        reader.stop()
        await asyncio.wait_for(task, 5)
    finally:
        reader.stop()
        if not task.done():
            await asyncio.wait_for(task, 5)
    last = out.take()
    assert got.arbitration_id.tolist() == [0x123, 0x1ABCDEF, 0x55, 0x18FEF100, 0x100]
    assert got.is_fd.tolist() == [False, False, True, True, False]
    assert last is not None and last.arbitration_id.tolist() == [0x321]
    assert reader.stats.error_frames == 1 and reader.stats.remote_frames == 1 and reader.stats.frames == 6
    assert opened == [bus]


def test_can_filters_are_refused_not_ignored() -> None:
    """python-can filters in recv(), which the bulk reader does not call; it must not pass every frame."""
    with pytest.raises(BusError, match="can_filters"):
        SocketcanBus("vcan0", can_filters=[{"can_id": 0x123, "can_mask": 0x7FF}])
