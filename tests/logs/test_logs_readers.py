"""Log readers: every shared log reads; candump and BLF equal python-can's readers;
corrupt and truncated inputs are reported with their location and counted."""

from __future__ import annotations

from pathlib import Path

import can
import numpy as np
import pytest

from tcu.can.logs import open_log
from tcu.errors import LogFormatError
from tcu.frames import concat_frames
from tools.shared_data import shared_path

LOG_DIR = shared_path("can/logs")
RAV4 = shared_path("can/logs/comma2k19_rav4_2017_seg40.log")
SHARED_LOGS = sorted(
    p for p in LOG_DIR.iterdir() if p.suffix.lower() in {".log", ".blf", ".asc", ".trc", ".mf4"}
)


def _same_as_python_can(path: Path, chunk_frames: int = 65536) -> int:
    reader = open_log(path, chunk_frames=chunk_frames)
    chunk = concat_frames(reader)
    with can.LogReader(str(path)) as python_can_reader:
        expected = list(python_can_reader)
    assert len(chunk) == len(expected) == reader.stats.frames
    for i, msg in enumerate(expected):
        where = f"{path.name} frame {i}: {msg}"
        assert chunk.arbitration_id[i] == msg.arbitration_id, where
        assert chunk.is_extended[i] == msg.is_extended_id, where
        assert chunk.is_remote[i] == msg.is_remote_frame, where
        assert chunk.is_error[i] == msg.is_error_frame, where
        assert chunk.is_fd[i] == msg.is_fd, where
        assert chunk.bitrate_switch[i] == msg.bitrate_switch, where
        assert chunk.is_rx[i] == msg.is_rx, where
        assert chunk.dlc[i] == msg.dlc, where
        n = len(msg.data)
        assert bytes(chunk.data[i, :n]) == bytes(msg.data), where
        assert not chunk.data[i, n:].any(), where
        assert chunk.channels[chunk.channel[i]] == str(msg.channel), where
        assert abs(int(chunk.t_ns[i]) - msg.timestamp * 1e9) < 1e3, where
    return len(chunk)


@pytest.mark.parametrize("path", SHARED_LOGS, ids=lambda p: p.name)
def test_every_shared_log_reads_without_problems(path: Path) -> None:
    reader = open_log(path)
    chunk = concat_frames(reader)
    assert len(chunk) > 0
    assert reader.stats.bad_records == 0
    assert reader.stats.stopped_at is None
    with can.LogReader(str(path)) as expected:
        assert len(chunk) == sum(1 for _ in expected)


def test_rav4_candump_equals_python_can_in_small_chunks() -> None:
    assert _same_as_python_can(RAV4, chunk_frames=2000) == 135_468


@pytest.mark.parametrize("name", ["test_CanFdMessage.blf", "test_CanErrorFrameExt.blf"])
def test_shared_blf_equals_python_can(name: str) -> None:
    assert _same_as_python_can(LOG_DIR / name) == 2


def _write_mixed_blf(path: Path, frames: int) -> None:
    rng = np.random.default_rng(7)
    with can.BLFWriter(str(path)) as writer:
        for i in range(frames):
            kind = i % 7
            fd = kind == 3
            length = 64 if fd else int(rng.integers(0, 9))
            writer.on_message_received(
                can.Message(
                    timestamp=1_700_000_000 + i * 0.001,
                    arbitration_id=0x1234567 if kind == 2 else int(rng.integers(0, 0x7FF)),
                    is_extended_id=kind == 2,
                    is_remote_frame=kind == 4,
                    is_fd=fd,
                    bitrate_switch=fd and (i // 7) % 2 == 0,
                    is_error_frame=kind == 5,
                    data=None if kind == 4 else bytes(rng.integers(0, 256, length, dtype=np.uint8)),
                    dlc=3 if kind == 4 else length,
                    channel=kind % 3,
                    is_rx=kind != 6,
                )
            )


def test_generated_blf_with_every_frame_kind_equals_python_can(tmp_path: Path) -> None:
    path = tmp_path / "mixed.blf"
    _write_mixed_blf(path, 20_000)
    assert _same_as_python_can(path, chunk_frames=3000) == 20_000
    sizes = [len(c) for c in open_log(path, chunk_frames=3000)]
    assert len(sizes) > 3 and max(sizes) < 3000 + 3000  # at most one container beyond the target


def test_candump_frame_kinds_and_corrupt_lines(tmp_path: Path) -> None:
    path = tmp_path / "mixed.log"
    path.write_text(
        "(1436509052.249713) vcan0 044#2A366C2BBA\n"
        "(1436509052.650004) vcan0 1AB#R\n"
        "(1436509052.750004) vcan0 1AB#R4\n"
        "\n"
        "(1436509052.850004) can1 12345678##1001122334455667788990011\n"
        "(1436509052.950004) can1 12345678#\n"
        "(1436509053.0) longchannelname0 123#11 T\n"
        "(1436509053.2) vcan0 123#1G\n"
        "garbage line here\n"
        "(1436509053.3) vcan0 00000123#AABB   R\n"
        "(1436509053.4) vcan0 123#112233\n"
    )
    reader = open_log(path)
    chunk = concat_frames(reader)
    assert len(chunk) == 8
    assert chunk.t_ns[0] == 1436509052_249713000
    assert chunk.is_remote[1] and chunk.dlc[1] == 0 and chunk.is_remote[2] and chunk.dlc[2] == 4
    assert chunk.is_fd[3] and chunk.dlc[3] == 12 and chunk.arbitration_id[3] == 0x12345678
    assert chunk.bitrate_switch[3] and not chunk.bitrate_switch[[0, 1, 2, 4, 5, 6, 7]].any()  # flags 1: BRS
    assert chunk.is_extended[4] and chunk.dlc[4] == 0
    assert chunk.channels[chunk.channel[5]] == "longchannelname0" and not chunk.is_rx[5]
    assert chunk.is_extended[6] and chunk.arbitration_id[6] == 0x123
    assert bytes(chunk.data[7, :3]) == b"\x11\x22\x33"
    stats = reader.stats
    assert stats.bad_records == 2
    assert [(p.line, p.problem.split(" ")[0]) for p in stats.problems] == [(8, "bad"), (9, "not")]
    assert str(stats.problems[0]).startswith(f"{path}:8: ")


def test_candump_truncated_last_line_is_reported(tmp_path: Path) -> None:
    lines = RAV4.read_bytes().splitlines(keepends=True)[:1000]
    path = tmp_path / "cut.log"
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][:25])
    reader = open_log(path)
    chunk = concat_frames(reader)
    assert len(chunk) == 999
    assert reader.stats.bad_records == 1
    assert reader.stats.stopped_at == "line 1000"
    assert reader.stats.problems[0].line == 1000


def test_candump_many_corrupt_lines_are_all_counted(tmp_path: Path) -> None:
    lines = RAV4.read_bytes().splitlines(keepends=True)[:20_000]
    for i in range(100, 20_000, 100):
        lines[i] = lines[i].replace(b"#", b"#Z", 1)
    path = tmp_path / "noisy.log"
    path.write_bytes(b"".join(lines))
    reader = open_log(path, chunk_frames=1000)
    chunks = list(reader)
    assert sum(len(c) for c in chunks) == 20_000 - 199
    assert reader.stats.bad_records == 199
    assert reader.stats.problems[0].line == 101
    assert max(len(c) for c in chunks) < 5_000  # streamed in bounded chunks


def _blf_container_offsets(data: bytes) -> list[int]:
    offsets, pos = [], 144
    while pos + 16 <= len(data):
        size = int.from_bytes(data[pos + 8 : pos + 12], "little")
        offsets.append(pos)
        pos += size + size % 4
    return offsets


def test_blf_corrupt_container_is_reported_with_offset_and_skipped(tmp_path: Path) -> None:
    source = tmp_path / "mixed.blf"
    _write_mixed_blf(source, 20_000)
    data = bytearray(source.read_bytes())
    offsets = _blf_container_offsets(bytes(data))
    assert len(offsets) >= 3
    victim = offsets[1]
    data[victim + 32 : victim + 48] = b"\xff" * 16  # inside the zlib stream
    path = tmp_path / "corrupt.blf"
    path.write_bytes(bytes(data))
    reader = open_log(path)
    chunk = concat_frames(reader)
    assert reader.stats.bad_records >= 1
    assert reader.stats.problems[0].offset == victim
    assert 0 < len(chunk) < 20_000
    assert reader.stats.stopped_at is None


def test_blf_truncated_file_decodes_what_is_readable(tmp_path: Path) -> None:
    source = tmp_path / "mixed.blf"
    _write_mixed_blf(source, 20_000)
    data = source.read_bytes()
    offsets = _blf_container_offsets(data)
    cut = offsets[2] + 500
    path = tmp_path / "cut.blf"
    path.write_bytes(data[:cut])
    reader = open_log(path)
    chunk = concat_frames(reader)
    full = concat_frames(open_log(source))
    assert reader.stats.stopped_at is not None and "byte" in reader.stats.stopped_at
    assert 0 < len(chunk) < len(full)
    n = len(chunk)
    assert (chunk.arbitration_id == full.arbitration_id[:n]).all()
    assert (chunk.data == full.data[:n]).all()
    # the partial third container contributed frames beyond the two complete ones
    (tmp_path / "two.blf").write_bytes(data[: offsets[2]])
    assert len(chunk) > len(concat_frames(open_log(tmp_path / "two.blf")))


def test_not_a_blf_file(tmp_path: Path) -> None:
    path = tmp_path / "x.blf"
    path.write_bytes(b"NOPE" + bytes(200))
    with pytest.raises(LogFormatError, match="not a BLF file"):
        list(open_log(path))


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LogFormatError, match="suffix"):
        open_log(tmp_path / "x.xyz")
    with pytest.raises(LogFormatError, match="no such log file"):
        open_log(tmp_path / "x.log")
