"""ReplayBus: a python-can bus that replays a log with recorded timestamps and pacing."""

from __future__ import annotations

import time
from pathlib import Path

import can
import pytest

from tcu.can.logs.replay import ReplayBus
from tcu.errors import LogFormatError
from tools.shared_data import shared_path

RAV4 = shared_path("can/logs/comma2k19_rav4_2017_seg40.log")


def _drain(bus: ReplayBus, timeout_s: float = 0.0) -> list[can.Message]:
    out = []
    while (msg := bus.recv(timeout_s)) is not None:
        out.append(msg)
    return out


def test_full_replay_at_max_rate_equals_the_log() -> None:
    with ReplayBus(RAV4, rate=None) as bus:
        got = _drain(bus)
        assert bus.finished
    with can.LogReader(str(RAV4)) as reader:
        want = list(reader)
    assert len(got) == len(want) == 135_468
    for g, w in zip(got[::97], want[::97], strict=True):
        assert g.equals(w, timestamp_delta=1e-6), (g, w)


def test_window_channel_filter_and_mapping() -> None:
    with ReplayBus(
        RAV4, rate=None, start_s=10, end_s=12, channels=["can1"], channel_map={"can1": "radar"}
    ) as bus:
        got = _drain(bus)
    assert got and {m.channel for m in got} == {"radar"}
    with can.LogReader(str(RAV4)) as reader:
        everything = list(reader)
    t0 = everything[0].timestamp
    want = [m for m in everything if m.channel == "can1" and 10 <= m.timestamp - t0 <= 12]
    assert len(got) == len(want)
    assert got[0].timestamp == pytest.approx(want[0].timestamp, abs=1e-6)  # original timestamps kept


def _small_log(tmp_path: Path) -> Path:
    path = tmp_path / "small.log"
    path.write_text("".join(f"(100.{i}00000) can0 123#0{i}\n" for i in range(4)))  # 0.1 s apart
    return path


def test_rate_paces_frames(tmp_path: Path) -> None:
    path = _small_log(tmp_path)
    with ReplayBus(path, rate=1.0) as bus:
        started = time.monotonic()
        got = [bus.recv(2.0) for _ in range(4)]
        elapsed = time.monotonic() - started
    assert [m.data[0] for m in got] == [0, 1, 2, 3]
    assert 0.28 <= elapsed < 1.0
    with ReplayBus(path, rate=10.0) as bus:
        started = time.monotonic()
        assert len([bus.recv(2.0) for _ in range(4)]) == 4
        assert time.monotonic() - started < 0.2


def test_recv_timeout_shorter_than_the_next_frame_returns_none(tmp_path: Path) -> None:
    with ReplayBus(_small_log(tmp_path), rate=1.0) as bus:
        assert bus.recv(1.0) is not None
        assert bus.recv(0.02) is None  # the next frame is due 0.1 s after the first
        msg = bus.recv(1.0)
        assert msg is not None and msg.data[0] == 1


def test_loop_keeps_timestamps_increasing(tmp_path: Path) -> None:
    with ReplayBus(_small_log(tmp_path), rate=None, loop=True) as bus:
        got = [bus.recv(0) for _ in range(10)]
    stamps = [m.timestamp for m in got]
    assert stamps == sorted(stamps) and len(set(stamps)) == 10
    assert [m.data[0] for m in got] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert stamps[4] - stamps[0] == pytest.approx(0.4, abs=1e-6)


def test_now_timestamps(tmp_path: Path) -> None:
    with ReplayBus(_small_log(tmp_path), rate=None, timestamps="now") as bus:
        msg = bus.recv(0)
    assert msg is not None and abs(msg.timestamp - time.time()) < 5


def test_receive_only_and_bad_options(tmp_path: Path) -> None:
    with ReplayBus(_small_log(tmp_path), rate=None) as bus, pytest.raises(can.CanOperationError):
        bus.send(can.Message(arbitration_id=1))
    with pytest.raises(ValueError, match="rate"):
        ReplayBus(_small_log(tmp_path), rate=0)
    with pytest.raises(LogFormatError, match="no such log file"):
        ReplayBus(tmp_path / "missing.log")


def test_bus_reader_takes_the_replay_frames_as_columns_with_fd_flags(tmp_path: Path) -> None:
    """The agent's reader gets FrameBatches from the replay bus (no can.Message), CAN FD flags kept."""
    import asyncio

    from loopback import next_frames

    from tcu.can.bus import BusReader
    from tcu.can.collector import FrameCollector
    from tcu.config import BusConfig
    from tcu.frames import FrameBatch

    path = tmp_path / "fd.log"
    path.write_text(
        "(1700000000.000100) can0 123#1122334455667788\n"
        "(1700000000.000200) can0 12345678##1" + "AB" * 12 + "\n"  # FD with BRS, extended
        "(1700000000.000300) can0 124##0" + "CD" * 16 + "\n"  # FD without BRS
        "(1700000000.000400) can0 125#R\n"  # remote: counted, not delivered
    )
    recv_calls = 0
    real_recv = ReplayBus.recv

    def counting_recv(self: ReplayBus, timeout: float | None = None) -> can.Message | None:
        nonlocal recv_calls
        recv_calls += 1
        return real_recv(self, timeout)

    config = BusConfig(name="pt", interface="replay", channel=str(path), dbc=(), options={"rate": None})
    reader = BusReader(config, batch_ms=50)

    async def run() -> list[FrameBatch]:
        queue = FrameCollector(["pt"], block=["pt"])
        task = asyncio.create_task(reader.run(queue))
        got: list[FrameBatch] = []
        while sum(len(b) for b in got) < 3:
            batch = await next_frames(queue, 10)
            assert batch is not None
            got.append(batch)
        reader.stop()
        await task
        return got

    ReplayBus.recv = counting_recv  # type: ignore[method-assign]
    try:
        batches = asyncio.run(run())
    finally:
        ReplayBus.recv = real_recv  # type: ignore[method-assign]
    assert recv_calls == 0
    assert all(b.channels == ("pt",) for b in batches)
    frames = batches[0] if len(batches) == 1 else None
    assert frames is not None and len(frames) == 3
    assert frames.t_ns.tolist() == [1700000000_000100000, 1700000000_000200000, 1700000000_000300000]
    assert frames.is_fd.tolist() == [False, True, True]
    assert frames.bitrate_switch.tolist() == [False, True, False]
    assert frames.is_extended.tolist() == [False, True, False]
    assert frames.dlc.tolist() == [8, 12, 16]
    assert frames.payload(1) == b"\xab" * 12
    assert reader.stats.frames == 3 and reader.stats.remote_frames == 1
