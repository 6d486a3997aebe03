"""The candump reader's template path (lines of one shape parsed by columns) gives exactly the
frames, channel codes and problems of its general path, on lines of many shapes with near misses."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tcu.can.logs import candump, open_log
from tcu.frames import FrameBatch, concat_frames


def _lines(rng: np.random.Generator) -> list[str]:
    """Runs of lines of many shapes (each run long enough for a template), near misses within them."""
    hexes = "0123456789ABCDEFabcdef"
    out: list[str] = []
    shapes = [
        ("{t} can0 {i3}#{d8} R", 8),
        ("{t} can1 {i8}#{d8} T", 8),
        ("{t} vcan0 {i3}#{d3}", 3),
        ("{t} can0 {i8}#", 0),
        ("{t} can0 {i3}##1{d12} R", 12),
        ("{t} can0 {i8}##0{d64}", 64),
        ("{t} can_long_name15 {i3}#{d8} r", 8),
        ("{t} can0 {i3}#{d8} t", 8),
        ("{t} longchannelname0 {i3}#{d8}", 8),  # 16 characters
    ]
    for run in range(3):
        for fmt, n_bytes in shapes:
            for k in range(20):
                sec = 1436509052 + run * 10 + k
                t = f"({sec}.{int(rng.integers(0, 10**6)):06d})"
                i3 = "".join(rng.choice(list("01234567"), 1)) + "".join(rng.choice(list(hexes), 2))
                i8 = "".join(rng.choice(list(hexes), 8))
                if k == 3:
                    i8 = "3" + i8[1:]  # CAN_ERR_FLAG set: an error frame
                data = "".join(rng.choice(list(hexes), 2 * n_bytes))
                line = fmt.format(t=t, i3=i3, i8=i8, d8=data, d3=data, d12=data, d64=data)
                if k == 7:  # near misses of the same length: each must fall to the general path
                    at = int(rng.integers(1, len(line)))
                    line = line[:at] + 'G#. !"\t'[int(rng.integers(0, 7))] + line[at + 1 :]
                if k == 11:
                    line = line.replace("(", "(9", 1)[:-1] if len(line) > 30 else line
                out.append(line)
        out.append(f"(1436509099.1) vcan0 1AB#R{run}")
        out.extend(f"(99999999999.{k:06d}) can0 123#11" for k in range(20))  # beyond int64 ns
        base = "(1436509052.000001) can0 12345678##1AABB R"
        out.extend([base] * 20)
        for at in range(len(base)):  # every column of a template, hit by every kind of misfit
            out.extend(base[:at] + bad + base[at + 1 :] for bad in 'G#. !"\tg9R0t')
        out.append("(99999999999.000001) can0 123#11")  # beyond int64 ns: reported
        out.append("(1436509052.5) can0 123#11223344556677889900")  # 10 bytes classic: bad
    return out


def _read(path: Path) -> tuple[FrameBatch, list[tuple[int | None, str]], int]:
    reader = open_log(path, chunk_frames=256)  # several blocks
    chunk = concat_frames(reader)
    return chunk, [(p.line, p.problem) for p in reader.stats.problems], reader.stats.bad_records


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_template_path_equals_general_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, newline: str
) -> None:
    lines = _lines(np.random.default_rng(13))
    path = tmp_path / "shapes.log"
    path.write_bytes(newline.join(lines).encode("latin-1") + newline.encode())
    fast, fast_problems, fast_bad = _read(path)
    monkeypatch.setattr(candump, "_MIN_TEMPLATE_LINES", 10**9)  # the general path only
    slow, slow_problems, slow_bad = _read(path)
    assert len(fast) > 400 and fast_bad > 5
    assert (fast_problems, fast_bad) == (slow_problems, slow_bad)
    assert fast.channels == slow.channels
    for name in (f.name for f in dataclasses.fields(FrameBatch)):
        assert np.array_equal(getattr(fast, name), getattr(slow, name)), name
    assert fast.is_error.sum() >= 3 and fast.is_fd.sum() >= 60 and (~fast.is_rx).sum() >= 60


def test_template_path_takes_the_regular_lines(tmp_path: Path) -> None:
    """The fast path is really used: every line of a regular block goes through a template."""
    path = tmp_path / "regular.log"
    path.write_text("".join(f"(1436509052.{k:06d}) can0 123#1122334455667788 R\n" for k in range(100)))
    block = path.read_bytes()
    arr = np.frombuffer(b"\0" * candump._PAD_BEFORE + block + b"\0" * candump._PAD_AFTER, np.uint8)
    ends = np.flatnonzero(arr == 10).astype(np.int64)
    starts = np.concatenate([[candump._PAD_BEFORE], ends[:-1] + 1]).astype(np.int64)
    covered, parts = candump._templated(arr, starts, ends, ends > starts)
    assert covered.all() and len(parts) == 1
    assert bytes(parts[0].data[5]) == bytes.fromhex("1122334455667788")
