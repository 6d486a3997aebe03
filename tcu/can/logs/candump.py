"""Bulk reader of ``candump -L`` logs (python-can's ``.log`` format).

Lines look like ``(1436509052.249713) can0 123#11223344`` with optional trailing
``R``/``T`` (received / transmitted), 8-digit extended ids, ``123##<flags><data>`` for
CAN FD and ``123#R[len]`` for remote frames. The file is read in blocks of a few MB;
each block is parsed with numpy at once: newline, space and ``#`` positions give every
field's extent, and fixed-width windows of those bytes are turned into numbers through
lookup tables. Lines the fast path does not accept (remote and error frames, odd
spacing, corrupt text) are parsed one by one; a corrupt line is reported with its line
number and skipped. Timestamps are kept exactly, in integer nanoseconds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from tcu.can.logs.reading import ChannelTable, ReadStats
from tcu.frames import FrameBatch

__all__ = ["read_candump"]

log = logging.getLogger(__name__)

_BLOCK_BYTES = 4 << 20
_CAN_ERR_FLAG = 0x20000000
# Largest whole second whose nanoseconds (plus any fraction) fit in int64.
_MAX_SECONDS = (2**63 - 1 - 999_999_999) // 1_000_000_000

_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
_DIGIT = np.full(256, 255, dtype=np.uint8)
for _i in range(10):
    _DIGIT[ord("0") + _i] = _i

_LINE_RE = re.compile(
    r"^\((?P<sec>\d+)(?:\.(?P<frac>\d{1,9}))?\)\s+(?P<chan>\S+)\s+"
    r"(?P<id>[0-9A-Fa-f]{1,8})#(?P<frame>\S*)(?:\s+(?P<dir>[RTrt]))?\s*$"
)
_FD_RE = re.compile(r"^#(?P<flags>[0-9A-Fa-f])(?P<data>(?:[0-9A-Fa-f]{2}){0,64})$")
_DATA_RE = re.compile(r"^(?:[0-9A-Fa-f]{2}){0,8}$")
_RTR_RE = re.compile(r"^[Rr](?P<len>\d{0,2})$")
_FD_LENGTHS = frozenset((0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64))


def read_candump(
    path: str | Path,
    stats: ReadStats,
    *,
    chunk_frames: int = 65536,
    stream: BinaryIO | None = None,
) -> Iterator[FrameBatch]:
    """Yield the frames of a candump ``-L`` file in chunks of up to about ``chunk_frames``.

    With ``stream`` (a pipe such as stdin) that is read instead of ``path``, which then only
    names the source in problems; a pipe yields each block as soon as it is read.
    """
    if stream is not None:
        yield from _read_candump_stream(stream, stats, chunk_frames=chunk_frames, live=True)
        return
    with Path(path).open("rb") as handle:
        yield from _read_candump_stream(handle, stats, chunk_frames=chunk_frames)


def _read_candump_stream(
    handle: BinaryIO, stats: ReadStats, *, chunk_frames: int, live: bool = False
) -> Iterator[FrameBatch]:
    channels = ChannelTable(stats.path)
    block_bytes = max(1 << 16, min(_BLOCK_BYTES, chunk_frames * 48))
    line_base = 1
    tail = b""
    # read1 on a pipe returns what has arrived, so `candump -L can0 | tcu decode -` is live
    read = getattr(handle, "read1", handle.read) if live else handle.read
    while True:
        raw = read(block_bytes)
        at_eof = not raw
        block = tail + raw
        if not block:
            break
        if at_eof:
            cut = len(block)
            if not block.endswith(b"\n"):
                block += b"\n"
                cut = len(block)
        else:
            last_nl = block.rfind(b"\n")
            if last_nl < 0:
                tail = block
                continue
            cut = last_nl + 1
        tail = block[cut:]
        work = block[:cut]
        chunk, lines = _parse_block(work, line_base, channels, stats, at_eof=at_eof)
        line_base += lines
        if len(chunk):
            stats.frames += len(chunk)
            yield chunk
        if at_eof:
            break


_PAD_BEFORE = 16
_PAD_AFTER = 256


def _groups(lengths: npt.NDArray[np.int64]) -> list[tuple[int, npt.NDArray[np.intp]]]:
    """(value, indices) for every distinct small non-negative value in ``lengths``."""
    if len(lengths) == 0:
        return []
    counts = np.bincount(lengths)
    present = np.flatnonzero(counts)
    if len(present) == 1:
        return [(int(present[0]), np.arange(len(lengths)))]
    return [(int(k), np.flatnonzero(lengths == k)) for k in present]


def _numbers(
    arr: npt.NDArray[np.uint8],
    first: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64],
    lut: npt.NDArray[np.uint8],
    base: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Parse the digit runs arr[first:first+length] per row; (values, bad)."""
    values = np.zeros(len(first), dtype=np.int64)
    bad = np.zeros(len(first), dtype=np.bool_)
    for k, sel in _groups(lengths):
        if k == 0:
            continue
        digits = lut[arr[first[sel, None] + np.arange(k)]]
        bad[sel] = (digits == 255).any(axis=1)
        weights = base ** np.arange(k - 1, -1, -1, dtype=np.int64)
        values[sel] = digits.astype(np.int64) @ weights
    return values, bad


def _parse_block(
    block: bytes, line_base: int, channels: ChannelTable, stats: ReadStats, *, at_eof: bool
) -> tuple[FrameBatch, int]:
    arr = np.frombuffer(b"\0" * _PAD_BEFORE + block + b"\0" * _PAD_AFTER, dtype=np.uint8)
    sentinel = len(arr) - _PAD_AFTER  # first padding byte; reads up to +255 stay inside
    ends = np.flatnonzero(arr == 10).astype(np.int64)
    n_lines = len(ends)
    starts = np.empty(n_lines, dtype=np.int64)
    starts[0] = _PAD_BEFORE
    starts[1:] = ends[:-1] + 1
    ends = ends - ((ends > starts) & (arr[ends - 1] == 13))  # strip a trailing '\r'
    nonempty = ends > starts

    def first_after(symbol: int, skip: int = 0) -> npt.NDArray[np.int64]:
        where = np.flatnonzero(arr == symbol)
        index = np.searchsorted(where, starts) + skip
        found = np.full(n_lines, sentinel, dtype=np.int64)
        inside = index < len(where)
        found[inside] = where[index[inside]]
        return found

    spaces = np.flatnonzero(arr == 32)
    sp_index = np.searchsorted(spaces, starts)
    sp1, sp2, sp3 = (np.full(n_lines, sentinel, dtype=np.int64) for _ in range(3))
    for target, skip in ((sp1, 0), (sp2, 1), (sp3, 2)):
        index = sp_index + skip
        inside = index < len(spaces)
        target[inside] = spaces[index[inside]]
    hash1 = first_after(35)
    dot = first_after(46)

    has_dir = sp3 < ends
    data_end = np.where(has_dir, sp3, ends)
    fd = arr[hash1 + 1] == 35
    data_start = np.where(fd, hash1 + 3, hash1 + 1)
    n_chars = data_end - data_start
    id_len = hash1 - sp2 - 1
    chan_len = sp2 - sp1 - 1
    frac_len = sp1 - dot - 2
    sec_len = dot - starts - 1

    ok = nonempty & (arr[starts] == 40) & (arr[sp1 - 1] == 41) & (sp1 < ends) & (sp2 < hash1)
    ok &= hash1 < data_end
    ok &= (dot < sp1) & (sec_len >= 1) & (sec_len <= 12) & (frac_len >= 1) & (frac_len <= 9)
    ok &= (chan_len >= 1) & (chan_len <= 16)  # IFNAMSIZ - 1 = 15; longer names: slow path
    ok &= (id_len == 3) | (id_len == 8)
    ok &= (n_chars >= 0) & (n_chars % 2 == 0) & (n_chars <= np.where(fd, 128, 16))
    dir_char = arr[sp3 + 1] | 32
    ok &= ~has_dir | ((ends - sp3 == 2) & ((dir_char == ord("r")) | (dir_char == ord("t"))))
    ok &= (arr[data_start] | 32) != ord("r")  # remote frames take the slow path
    if fd.any():
        ok &= ~fd | (_HEX[arr[hash1 + 2]] != 255)
        ok &= ~fd | np.isin(n_chars // 2, np.array(sorted(_FD_LENGTHS)))

    good = np.flatnonzero(ok)
    sec, bad = _numbers(arr, starts[good] + 1, sec_len[good], _DIGIT, 10)
    bad |= sec > _MAX_SECONDS  # would wrap in int64: the slow path reports the line
    frac, bad_frac = _numbers(arr, dot[good] + 1, frac_len[good], _DIGIT, 10)
    bad |= bad_frac
    frac *= 10 ** (9 - frac_len[good])
    t_ns = sec * 1_000_000_000 + frac
    ident64, bad_id = _numbers(arr, sp2[good] + 1, id_len[good], _HEX, 16)
    bad |= bad_id
    ident = ident64.astype(np.uint32)
    ext = id_len[good] == 8
    lengths = n_chars[good] // 2
    fd_g = fd[good]
    brs_g = fd_g & ((_HEX[arr[hash1[good] + 2]] & 1) != 0)  # CANFD_BRS in the flags nibble
    width = 64 if bool(fd_g.any()) else 8
    data = np.zeros((len(good), width), dtype=np.uint8)
    g_start = data_start[good]
    for k, sel in _groups(lengths):
        if k == 0:
            continue
        nibbles = _HEX[arr[g_start[sel, None] + np.arange(2 * k)]]
        bad[sel] |= (nibbles == 255).any(axis=1)
        pairs = nibbles.reshape(len(sel), k, 2)
        data[sel, :k] = (pairs[:, :, 0] << 4) | (pairs[:, :, 1] & 15)
    chan = np.zeros(len(good), dtype=np.int16)
    if len(good):
        c_len = chan_len[good]
        cols = np.arange(16)
        cbytes = arr[sp1[good, None] + 1 + cols]
        cbytes = np.where(cols < c_len[:, None], cbytes, 0).astype(np.uint8)
        halves = np.ascontiguousarray(cbytes).view(np.uint64)  # (n, 2): a channel name is 2 words
        first = halves[0]
        if bool(((halves[:, 0] == first[0]) & (halves[:, 1] == first[1])).all()):
            chan[:] = channels.code(_channel_name(halves[0]))
        elif not halves[:, 1].any():  # names of up to 8 characters: one word each
            uniq, inverse = np.unique(halves[:, 0], return_inverse=True)
            codes = np.array([channels.code(_channel_name(u[None])) for u in uniq], dtype=np.int16)
            chan = codes[inverse.ravel()]
        else:
            uniq2, inverse = np.unique(halves, axis=0, return_inverse=True)
            codes = np.array([channels.code(_channel_name(u)) for u in uniq2], dtype=np.int16)
            chan = codes[inverse.ravel()]
    rx = ~(has_dir[good] & ((arr[sp3[good] + 1] | 32) == ord("t")))
    is_error = ext & ((ident & np.uint32(_CAN_ERR_FLAG)) != 0)
    ident = ident & np.uint32(0x1FFFFFFF)

    # ---- slow lines (remote, error, odd spacing, corrupt)
    slow = np.flatnonzero(nonempty & ~ok)
    if bad.any():
        slow = np.sort(np.concatenate([slow, good[bad]]))
    extra: list[tuple[int, _Parsed]] = []
    slow_list: list[int] = slow.tolist()
    for line_index in slow_list:
        text = arr[int(starts[line_index]) : int(ends[line_index])].tobytes()
        is_last = at_eof and line_index == n_lines - 1
        parsed = _parse_line(text, line_base + line_index, stats, is_last=is_last)
        if parsed is not None:
            extra.append((line_index, parsed))

    keep = ~bad
    order_index = good[keep]
    t_ns, ident, ext, chan, lengths = t_ns[keep], ident[keep], ext[keep], chan[keep], lengths[keep]
    data, fd_g, brs_g, is_error, rx = data[keep], fd_g[keep], brs_g[keep], is_error[keep], rx[keep]
    remote = np.zeros(len(t_ns), dtype=np.bool_)
    if extra:
        if any(len(p[5]) > 8 for _, p in extra) and data.shape[1] < 64:
            data = np.pad(data, ((0, 0), (0, 64 - data.shape[1])))
        ex_data = np.zeros((len(extra), data.shape[1]), dtype=np.uint8)
        for row, (_, p) in enumerate(extra):
            if p[5]:
                ex_data[row, : len(p[5])] = np.frombuffer(p[5], dtype=np.uint8)
        order = np.argsort(np.concatenate([order_index, [i for i, _ in extra]]), kind="stable")

        def merge(mine: npt.NDArray[Any], column: int, dtype: type) -> npt.NDArray[Any]:
            more: npt.NDArray[Any] = np.array([p[column] for _, p in extra], dtype=dtype)
            merged: npt.NDArray[Any] = np.concatenate([mine, more])[order]
            return merged

        t_ns = merge(t_ns, 0, np.int64)
        ident = merge(ident, 1, np.uint32)
        ext = merge(ext, 2, np.bool_)
        chan = np.concatenate([chan, [channels.code(p[3]) for _, p in extra]]).astype(np.int16)[order]
        lengths = merge(lengths, 4, np.int64)
        data = np.concatenate([data, ex_data])[order]
        fd_g = merge(fd_g, 6, np.bool_)
        brs_g = merge(brs_g, 10, np.bool_)
        is_error = merge(is_error, 7, np.bool_)
        remote = merge(remote, 8, np.bool_)
        rx = merge(rx, 9, np.bool_)
    chunk = FrameBatch(
        t_ns=t_ns.astype(np.int64),
        arbitration_id=ident.astype(np.uint32),
        is_extended=ext,
        channel=chan,
        channels=channels.snapshot(),
        dlc=lengths.astype(np.uint8),
        data=data,
        is_fd=fd_g,
        bitrate_switch=brs_g,
        is_error=is_error,
        is_remote=remote,
        is_rx=rx,
    )
    return chunk, n_lines


def _channel_name(words: npt.NDArray[np.uint64]) -> str:
    return words.tobytes().rstrip(b"\0").decode("ascii", "replace")


_Parsed = tuple[int, int, bool, str, int, bytes, bool, bool, bool, bool, bool]


def _parse_line(  # noqa: PLR0911 - one early return per kind of bad line
    raw: bytes, line_no: int, stats: ReadStats, *, is_last: bool
) -> _Parsed | None:
    """One line the fast path did not take: (t_ns, id, ext, channel, len, data, fd, err, rtr, rx, brs)."""
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        _bad(stats, line_no, "not ASCII text", is_last=is_last)
        return None
    if not text:
        return None
    match = _LINE_RE.match(text)
    if match is None:
        _bad(stats, line_no, f"not a candump -L line: {text[:60]!r}", is_last=is_last)
        return None
    frac = match.group("frac") or ""
    sec = match.group("sec").lstrip("0") or "0"
    if len(sec) > 19 or int(sec) > _MAX_SECONDS:  # int() refuses over 4300 digits
        _bad(stats, line_no, f"timestamp {sec[:24]!r} s is beyond int64 nanoseconds", is_last=is_last)
        return None
    t_ns = int(sec) * 1_000_000_000 + int(frac.ljust(9, "0") or "0")
    id_text = match.group("id")
    ident = int(id_text, 16)
    ext = len(id_text) > 3
    frame = match.group("frame")
    rx = (match.group("dir") or "R").upper() == "R"
    fd = False
    brs = False
    remote = False
    payload = b""
    length = 0
    if frame.startswith("#"):
        fd_match = _FD_RE.match(frame)
        if fd_match is None:
            _bad(stats, line_no, f"bad CAN FD payload {frame[:40]!r}", is_last=is_last)
            return None
        fd = True
        brs = bool(int(fd_match.group("flags"), 16) & 1)  # CANFD_BRS
        payload = bytes.fromhex(fd_match.group("data"))
        length = len(payload)
        if length not in _FD_LENGTHS:
            _bad(
                stats, line_no, f"CAN FD payload of {length} bytes is not a valid FD length", is_last=is_last
            )
            return None
    elif (rtr := _RTR_RE.match(frame)) is not None:
        remote = True
        length = int(rtr.group("len") or "0")
        if length > 8:
            _bad(stats, line_no, f"remote frame length {length} > 8", is_last=is_last)
            return None
    elif _DATA_RE.match(frame):
        payload = bytes.fromhex(frame)
        length = len(payload)
    else:
        _bad(stats, line_no, f"bad payload {frame[:40]!r} (want up to 8 hex byte pairs)", is_last=is_last)
        return None
    error = ext and bool(ident & _CAN_ERR_FLAG)
    return t_ns, ident & 0x1FFFFFFF, ext, match.group("chan"), length, payload, fd, error, remote, rx, brs


def _bad(stats: ReadStats, line_no: int, problem: str, *, is_last: bool) -> None:
    if is_last:
        stats.report(line=line_no, problem=f"{problem} (last line: file truncated?)")
        stats.truncated(f"line {line_no}")
    else:
        stats.report(line=line_no, problem=problem)
