"""Bulk reader of ``candump -L`` logs (python-can's ``.log`` format).

Lines look like ``(1436509052.249713) can0 123#11223344`` with optional trailing
``R``/``T`` (received / transmitted), 8-digit extended ids, ``123##<flags><data>`` for
CAN FD and ``123#R[len]`` for remote frames. The file is read in blocks of a few MB;
each block is parsed with numpy at once, in three tiers:

1. **templates**: lines of one length that have their first line's shape (every delimiter,
   digit, hex digit, channel byte and direction in the same column) are one ``(n, length)``
   byte matrix, checked and parsed column by column (real logs repeat a few shapes);
2. **general**: newline, space and ``#`` positions give every other line's field extents,
   and fixed-width windows of those bytes are turned into numbers through lookup tables;
3. **one by one**: lines neither accepts (remote frames, odd spacing, corrupt text); a
   corrupt line is reported with its line number and skipped.

The template tier takes only lines the general tier would parse the same way (tested
against it); error frames (``CAN_ERR_FLAG`` in the id) are data lines to both.
Timestamps are kept exactly, in integer nanoseconds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
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
    ends = np.flatnonzero(arr == 10).astype(np.int64)
    n_lines = len(ends)
    starts = np.empty(n_lines, dtype=np.int64)
    starts[0] = _PAD_BEFORE
    starts[1:] = ends[:-1] + 1
    ends = ends - ((ends > starts) & (arr[ends - 1] == 13))  # strip a trailing '\r'
    nonempty = ends > starts
    covered, parts = _templated(arr, starts, ends, nonempty)
    pending = nonempty & ~covered
    slow = np.zeros(0, dtype=np.int64)
    if pending.any():
        columns, slow = _generic(arr, starts, ends, pending)
        parts.append(columns)
    fast = _merge(parts, n_lines, channels)
    order_index, t_ns, ident, ext, chan, lengths = (
        fast.line,
        fast.t_ns,
        fast.ident,
        fast.ext,
        fast.chan,
        fast.lengths,
    )
    data, fd_g, brs_g, is_error, rx = fast.data, fast.fd, fast.brs, fast.is_error, fast.rx

    # ---- slow lines (remote, error, odd spacing, corrupt)
    extra: list[tuple[int, _Parsed]] = []
    slow_list: list[int] = slow.tolist()
    for line_index in slow_list:
        text = arr[int(starts[line_index]) : int(ends[line_index])].tobytes()
        is_last = at_eof and line_index == n_lines - 1
        parsed = _parse_line(text, line_base + line_index, stats, is_last=is_last)
        if parsed is not None:
            extra.append((line_index, parsed))

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


def _generic(
    arr: npt.NDArray[np.uint8],
    starts: npt.NDArray[np.int64],
    ends: npt.NDArray[np.int64],
    pending: npt.NDArray[np.bool_],
) -> tuple[_Columns, npt.NDArray[np.int64]]:
    """The lines of ``pending`` that no template took, field by field: (columns, lines for the slow path)."""
    n_lines = len(starts)
    sentinel = len(arr) - _PAD_AFTER  # first padding byte; reads up to +255 stay inside

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

    ok = pending & (arr[starts] == 40) & (arr[sp1 - 1] == 41) & (sp1 < ends) & (sp2 < hash1)
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
    names: list[str] = []
    if len(good):
        c_len = chan_len[good]
        cols = np.arange(16)
        cbytes = arr[sp1[good, None] + 1 + cols]
        cbytes = np.where(cols < c_len[:, None], cbytes, 0).astype(np.uint8)
        chan, names = _channel_ids(cbytes)
    rx = ~(has_dir[good] & ((arr[sp3[good] + 1] | 32) == ord("t")))
    is_error = ext & ((ident & np.uint32(_CAN_ERR_FLAG)) != 0)
    ident = ident & np.uint32(0x1FFFFFFF)

    slow = np.flatnonzero(pending & ~ok)
    if bad.any():
        slow = np.sort(np.concatenate([slow, good[bad]]))
    keep = ~bad
    columns = _Columns(
        good[keep],
        t_ns[keep],
        ident[keep],
        ext[keep],
        chan[keep],
        names,
        lengths[keep],
        data[keep],
        fd_g[keep],
        brs_g[keep],
        is_error[keep],
        rx[keep],
    )
    return columns, slow


@dataclass(frozen=True, slots=True)
class _Columns:
    """Frames parsed from some lines of a block; ``chan`` indexes ``names`` (this part's own)."""

    line: npt.NDArray[np.int64]  # line index in the block, increasing
    t_ns: npt.NDArray[np.int64]
    ident: npt.NDArray[np.uint32]
    ext: npt.NDArray[np.bool_]
    chan: npt.NDArray[np.int16]
    names: list[str]
    lengths: npt.NDArray[np.int64]
    data: npt.NDArray[np.uint8]
    fd: npt.NDArray[np.bool_]
    brs: npt.NDArray[np.bool_]
    is_error: npt.NDArray[np.bool_]
    rx: npt.NDArray[np.bool_]


def _channel_ids(cbytes: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.int16], list[str]]:
    """Channel names as (n, 16) zero-padded bytes → (index per row, distinct names)."""
    halves = np.ascontiguousarray(cbytes).view(np.uint64)  # (n, 2): a channel name is 2 words
    first = halves[0]
    if bool(((halves[:, 0] == first[0]) & (halves[:, 1] == first[1])).all()):
        return np.zeros(len(halves), dtype=np.int16), [_channel_name(halves[0])]
    if not halves[:, 1].any():  # names of up to 8 characters: one word each
        uniq, inverse = np.unique(halves[:, 0], return_inverse=True)
        return inverse.ravel().astype(np.int16), [_channel_name(u[None]) for u in uniq]
    uniq2, inverse = np.unique(halves, axis=0, return_inverse=True)
    return inverse.ravel().astype(np.int16), [_channel_name(u) for u in uniq2]


def _name_order(name: str) -> tuple[int, int]:
    """The order in which a block's new channel names get their codes (that of ``np.unique``
    on the names' two little-endian words), whichever path parsed them."""
    raw = name.encode("ascii", "replace")[:16].ljust(16, b"\0")
    return int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")


def _merge(parts: list[_Columns], n_lines: int, channels: ChannelTable) -> _Columns:
    """The parts' frames in line order, with channel codes of ``channels``."""
    names = sorted({name for part in parts for name in part.names}, key=_name_order)
    codes = {name: channels.code(name) for name in names}
    if not parts:
        n0 = np.zeros(0, dtype=np.int64)
        no = np.zeros(0, dtype=np.bool_)
        return _Columns(
            n0, n0, n0.astype(np.uint32), no, n0.astype(np.int16), [], n0,
            np.zeros((0, 8), np.uint8), no, no, no, no,
        )  # fmt: skip
    chans = [
        np.array([codes[name] for name in part.names], dtype=np.int16)[part.chan] if part.names else part.chan
        for part in parts
    ]
    if len(parts) == 1:
        p = parts[0]
        return _Columns(
            p.line, p.t_ns, p.ident, p.ext, chans[0], [], p.lengths, p.data, p.fd, p.brs, p.is_error, p.rx
        )
    line = np.concatenate([p.line for p in parts])
    taken = np.zeros(n_lines, dtype=np.bool_)
    taken[line] = True
    rank = np.cumsum(taken) - 1
    where = rank[line]
    total = len(line)
    width = max(p.data.shape[1] for p in parts)

    def gather(column: list[npt.NDArray[Any]]) -> npt.NDArray[Any]:
        out: npt.NDArray[Any] = np.empty(total, dtype=column[0].dtype)
        out[where] = np.concatenate(column)
        return out

    data = np.zeros((total, width), dtype=np.uint8)
    at = 0
    for p in parts:
        data[where[at : at + len(p.line)], : p.data.shape[1]] = p.data
        at += len(p.line)
    return _Columns(
        gather([p.line for p in parts]),
        gather([p.t_ns for p in parts]),
        gather([p.ident for p in parts]),
        gather([p.ext for p in parts]),
        gather(chans),
        [],
        gather([p.lengths for p in parts]),
        data,
        gather([p.fd for p in parts]),
        gather([p.brs for p in parts]),
        gather([p.is_error for p in parts]),
        gather([p.rx for p in parts]),
    )


# ---- the template path: lines of one shape, parsed by columns
#
# Most logs repeat a few line shapes ("(SSSSS.FFFFFF) can0 III#DDDDDDDDDDDDDDDD R"): lines of
# one length whose first line's fields sit at known columns. Such lines are viewed as one
# (n, length) byte matrix, every delimiter is checked at its column, and every field is
# parsed column by column. A line that does not match its template exactly (any delimiter,
# digit, hex digit, channel byte or direction out of place) is left to the general path,
# so the template path only ever takes lines the general path would parse the same way.

_TEMPLATE_RE = re.compile(
    rb"\((\d{1,12})\.(\d{1,9})\) ([^ #]{1,16}) ([0-9A-Fa-f]{3}|[0-9A-Fa-f]{8})#"
    rb"(#[0-9A-Fa-f])?((?:[0-9A-Fa-f]{2}){0,64})( [RTrt])?"
)
_MIN_TEMPLATE_LINES = 16  # fewer lines of a shape: the general path is as quick
_MAX_TEMPLATES_PER_LENGTH = 4


@dataclass(frozen=True, slots=True)
class _Template:
    length: int
    dot: int
    close: int
    chan: tuple[int, int]
    ident: tuple[int, int]
    fd: bool
    data: tuple[int, int]
    direction: int  # column of R/T, or -1

    @classmethod
    def of(cls, line: bytes) -> _Template | None:
        m = _TEMPLATE_RE.fullmatch(line)
        if m is None:
            return None
        fd = m.group(5) is not None
        n_bytes = len(m.group(6)) // 2
        if (n_bytes > 8 and not fd) or (fd and n_bytes not in _FD_LENGTHS):
            return None
        return cls(
            length=len(line),
            dot=m.end(1),
            close=m.end(2),
            chan=m.span(3),
            ident=m.span(4),
            fd=fd,
            data=m.span(6),
            direction=m.start(7) + 1 if m.group(7) else -1,
        )

    def delimiters(self) -> tuple[list[int], list[int]]:
        cols = [0, self.dot, self.close, self.close + 1, self.chan[1], self.ident[1]]
        chars = [40, 46, 41, 32, 32, 35]
        if self.fd:
            cols.append(self.ident[1] + 1)
            chars.append(35)
        if self.direction >= 0:
            cols.append(self.direction - 1)
            chars.append(32)
        return cols, chars


def _lines_matrix(
    arr: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64], length: int
) -> npt.NDArray[np.uint8]:
    """The bytes of lines of one length as a C-contiguous (n, length) matrix (row copies)."""
    n = len(starts)
    if n > 1:
        step = int(starts[1] - starts[0])
        if (
            step > length
            and int(starts[-1] - starts[0]) == step * (n - 1)
            and bool((np.diff(starts) == step).all())
        ):
            view: npt.NDArray[np.uint8] = np.lib.stride_tricks.as_strided(
                arr[int(starts[0]) :], shape=(n, length), strides=(step, 1), writeable=False
            )
            return np.ascontiguousarray(view)
    windows = np.lib.stride_tricks.sliding_window_view(arr, length)
    rows: npt.NDArray[np.uint8] = windows[starts]
    return rows


def _templated(
    arr: npt.NDArray[np.uint8],
    starts: npt.NDArray[np.int64],
    ends: npt.NDArray[np.int64],
    nonempty: npt.NDArray[np.bool_],
) -> tuple[npt.NDArray[np.bool_], list[_Columns]]:
    """Parse the lines that match a template of their length: (lines taken, parts)."""
    n_lines = len(starts)
    covered = np.zeros(n_lines, dtype=np.bool_)
    parts: list[_Columns] = []
    lengths = np.where(nonempty, ends - starts, 0)
    if n_lines == 0:
        return covered, parts
    counts = np.bincount(lengths)
    for length in np.flatnonzero(counts >= _MIN_TEMPLATE_LINES).tolist():
        if length == 0:
            continue
        if counts[length] == n_lines:
            lines = np.arange(n_lines, dtype=np.int64)
        else:
            lines = np.flatnonzero(lengths == length).astype(np.int64)
        matrix = _lines_matrix(arr, starts[lines], length)
        for _ in range(_MAX_TEMPLATES_PER_LENGTH):
            first = int(starts[lines[0]])
            template = _Template.of(arr[first : first + length].tobytes())
            if template is None:
                break
            part, matched = _parse_template(template, matrix, lines)
            if part is not None:
                parts.append(part)
                covered[part.line] = True
            if matched.all() or int((~matched).sum()) < _MIN_TEMPLATE_LINES:
                break
            rest = np.flatnonzero(~matched)
            lines, matrix = lines[rest], matrix[rest]
            if matched[0]:  # cannot happen: the first line defines the template
                break
    return covered, parts


def _ranges(t: _Template) -> tuple[npt.NDArray[np.uint8], ...]:
    """Per column of a template's lines, the bytes it may hold as two ranges: ``m - lo1 < w1``
    or ``(m | 32) - lo2 < w2`` (uint8 arithmetic; ``w2 = 0``: no second range)."""
    lo1 = np.full(t.length, 48, dtype=np.uint8)  # decimal digits by default (the timestamp)
    w1 = np.full(t.length, 10, dtype=np.uint8)
    lo2 = np.zeros(t.length, dtype=np.uint8)
    w2 = np.zeros(t.length, dtype=np.uint8)
    cols, chars = t.delimiters()
    lo1[cols], w1[cols] = chars, 1
    # channel names: printable bytes from '$' on (no space, no '#'; rarer names take the general path)
    lo1[t.chan[0] : t.chan[1]], w1[t.chan[0] : t.chan[1]] = 36, 127 - 36
    hex_cols = [*range(*t.ident), *range(*t.data), *([t.ident[1] + 2] if t.fd else [])]
    lo2[hex_cols], w2[hex_cols] = 97, 6  # a-f, A-F (digits by the first range)
    if t.direction >= 0:
        lo1[t.direction], w1[t.direction] = 0, 255  # checked on its own
    return lo1, w1, lo2, w2


def _parse_template(
    t: _Template, m: npt.NDArray[np.uint8], lines: npt.NDArray[np.int64]
) -> tuple[_Columns | None, npt.NDArray[np.bool_]]:
    """Parse the rows of ``m`` (lines of ``t``'s length) that match ``t``: (part, matched)."""
    lo1, w1, lo2, w2 = _ranges(t)
    # Every byte checked against its column's ranges at once; a row is taken when all hold.
    fine = (m - lo1) < w1
    fine |= ((m | np.uint8(32)) - lo2) < w2
    ok: npt.NDArray[np.bool_] = np.all(fine, axis=1)
    if t.direction >= 0:
        lower = m[:, t.direction] | np.uint8(32)
        ok &= (lower == ord("r")) | (lower == ord("t"))
    sec = _column_number(m, 1, t.dot, 10)
    ok &= sec <= _MAX_SECONDS
    if not ok.any():
        return None, ok
    if not ok.all():
        keep = np.flatnonzero(ok)
        lines, m, sec = lines[keep], m[keep], sec[keep]
    n = len(lines)
    frac = _column_number(m, t.dot + 1, t.close, 10)
    t_ns = sec * 1_000_000_000 + frac * 10 ** (9 - (t.close - t.dot - 1))
    nibble = (m & np.uint8(15)) + np.uint8(9) * (m >> np.uint8(6))  # hex digit value
    ident = _column_number(nibble, t.ident[0], t.ident[1], 16, offset=0).astype(np.uint32)
    ext_one = t.ident[1] - t.ident[0] == 8
    n_bytes = (t.data[1] - t.data[0]) // 2
    data = np.zeros((n, 64 if t.fd else 8), dtype=np.uint8)
    if n_bytes:
        d0, d1 = t.data
        data[:, :n_bytes] = (nibble[:, d0:d1:2] << np.uint8(4)) | nibble[:, d0 + 1 : d1 : 2]
    cbytes = np.zeros((n, 16), dtype=np.uint8)
    cbytes[:, : t.chan[1] - t.chan[0]] = m[:, t.chan[0] : t.chan[1]]
    chan, names = _channel_ids(cbytes)
    ext = np.full(n, ext_one, dtype=np.bool_)
    is_error = ext & ((ident & np.uint32(_CAN_ERR_FLAG)) != 0)
    ident &= np.uint32(0x1FFFFFFF)
    if t.fd:
        fd = np.ones(n, dtype=np.bool_)
        brs = (nibble[:, t.ident[1] + 2] & np.uint8(1)) != 0  # CANFD_BRS in the flags nibble
    else:
        fd = brs = np.zeros(n, dtype=np.bool_)
    rx = (m[:, t.direction] | np.uint8(32)) != ord("t") if t.direction >= 0 else np.ones(n, dtype=np.bool_)
    part = _Columns(
        lines, t_ns, ident, ext, chan, names, np.full(n, n_bytes, dtype=np.int64),
        data, fd, brs, is_error, rx,
    )  # fmt: skip
    return part, ok


def _column_number(
    m: npt.NDArray[np.uint8], start: int, stop: int, base: int, *, offset: int = 48
) -> npt.NDArray[np.int64]:
    """The number in columns start..stop of every row (digits ``m - offset``, checked before)."""
    value = np.zeros(m.shape[0], dtype=np.int64)
    for k in range(start, stop):
        value *= base
        value += m[:, k]
        if offset:
            value -= offset
    return value


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
