"""The packed form of one signal's samples of one batch (a row of the SQLite sink's ``chunks``).

A chunk holds ``count`` samples in time order (a stable sort of the batch's column, so
samples with equal times keep their arrival order). Its ``data`` blob is one format byte
and the payload:

* ``0`` raw doubles: ``count`` time deltas (int64 little-endian, the first from the chunk's
  first time, so 0) followed by ``count`` float64 values (NaN and its bits kept);
* ``1`` the same bytes, byte-shuffled (all first bytes, then all second bytes, ...) and
  compressed with zstandard: times and slowly changing values share their high bytes;
* ``2`` raw strings: the deltas, then the values as a JSON array of strings (UTF-8);
* ``3`` format 2 compressed with zstandard.

A chunk is compressed only when that makes it smaller. Everything is whole-array numpy
work; nothing is done per sample in Python (except JSON for string values).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
import zstandard

from tcu.errors import IngestError

__all__ = ["decode_chunk", "encode_double_columns", "encode_doubles", "encode_strings", "sort_column"]

RAW_DOUBLES: Final = 0
ZSTD_DOUBLES: Final = 1
RAW_STRINGS: Final = 2
ZSTD_STRINGS: Final = 3

_COMPRESS_FROM: Final = 48
"""Payloads shorter than this stay raw (zstd's frame alone is about 10 bytes)."""

_compressor = zstandard.ZstdCompressor(level=3, write_content_size=True, write_checksum=False)
_decompressor = zstandard.ZstdDecompressor()


def sort_column(
    t_ns: npt.NDArray[np.int64], values: npt.NDArray[np.float64] | list[str]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64] | list[str]]:
    """Time order, stable (equal times keep their order); no copy when already sorted."""
    if len(t_ns) < 2 or bool((t_ns[1:] >= t_ns[:-1]).all()):
        return t_ns, values
    order = np.argsort(t_ns, kind="stable")
    if isinstance(values, list):
        return t_ns[order], [values[i] for i in order.tolist()]
    return t_ns[order], values[order]


def _deltas(t_ns: npt.NDArray[np.int64]) -> bytes:
    deltas = np.empty(len(t_ns), dtype="<i8")
    deltas[0] = 0
    np.subtract(t_ns[1:], t_ns[:-1], out=deltas[1:])
    return deltas.tobytes()


def encode_doubles(t_ns: npt.NDArray[np.int64], values: npt.NDArray[np.float64]) -> bytes:
    """The blob of a sorted, non-empty double column."""
    raw = _deltas(t_ns) + np.ascontiguousarray(values, dtype="<f8").tobytes()
    if len(raw) >= _COMPRESS_FROM:
        shuffled = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 8).T.tobytes()
        packed = _compressor.compress(shuffled)
        if len(packed) < len(raw):
            return bytes((ZSTD_DOUBLES,)) + packed
    return bytes((RAW_DOUBLES,)) + raw


def encode_double_columns(
    times: Sequence[npt.NDArray[np.int64]], values: Sequence[npt.NDArray[np.float64]]
) -> tuple[list[bytes], list[int], list[int]]:
    """The blobs of many non-empty double columns at once, with each one's first and last time.

    Each blob is byte for byte ``encode_doubles(*sort_column(t, v))`` of its column; the
    work is whole-array numpy over all columns together (one sortedness check, one delta
    pass, one byte shuffle per distinct column length) and one zstd call per column.
    """
    if not times:
        return [], [], []
    counts = np.fromiter((len(t) for t in times), dtype=np.int64, count=len(times))
    t_all = np.concatenate(times).astype(np.int64, copy=False)
    v_all = np.ascontiguousarray(np.concatenate(values), dtype="<f8")
    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    step = np.diff(t_all)
    inside = np.ones(len(step), dtype=bool)
    inside[starts[1:] - 1] = False  # the steps from one column into the next
    if bool((step[inside] < 0).any()):  # some column is out of time order: sort each, stably
        column = np.repeat(np.arange(len(counts)), counts)
        by_time = np.argsort(t_all, kind="stable")
        order = by_time[np.argsort(column[by_time], kind="stable")]
        t_all, v_all = t_all[order], v_all[order]
        step = np.diff(t_all)
    deltas = np.empty(len(t_all), dtype="<i8")
    deltas[1:] = step
    deltas[starts] = 0
    d8 = deltas.view(np.uint8).reshape(-1, 8)
    v8 = v_all.view(np.uint8).reshape(-1, 8)
    blobs: list[bytes] = [b""] * len(counts)
    for n in np.unique(counts).tolist():
        group = np.flatnonzero(counts == n)
        rows = (starts[group][:, None] + np.arange(n)).ravel()
        block = np.concatenate((d8[rows].reshape(-1, n, 8), v8[rows].reshape(-1, n, 8)), axis=1)
        size = 16 * n
        raw = block.tobytes()  # per column: its deltas, then its values (what encode_doubles packs)
        shuffled = block.transpose(0, 2, 1).tobytes() if size >= _COMPRESS_FROM else b""
        for i, index in enumerate(group.tolist()):
            chunk = raw[i * size : (i + 1) * size]
            if shuffled:
                packed = _compressor.compress(shuffled[i * size : (i + 1) * size])
                if len(packed) < size:
                    blobs[index] = bytes((ZSTD_DOUBLES,)) + packed
                    continue
            blobs[index] = bytes((RAW_DOUBLES,)) + chunk
    lows: list[int] = t_all[starts].tolist()
    highs: list[int] = t_all[starts + counts - 1].tolist()
    return blobs, lows, highs


def encode_strings(t_ns: npt.NDArray[np.int64], values: list[str]) -> bytes:
    """The blob of a sorted, non-empty string column."""
    raw = _deltas(t_ns) + json.dumps(values, ensure_ascii=False).encode("utf-8")
    if len(raw) >= _COMPRESS_FROM:
        packed = _compressor.compress(raw)
        if len(packed) < len(raw):
            return bytes((ZSTD_STRINGS,)) + packed
    return bytes((RAW_STRINGS,)) + raw


def decode_chunk(
    t_first: int, count: int, data: bytes
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64] | list[str]]:
    """``(times, values)`` of a stored chunk: a float64 array, or a list of strings."""
    if not data:
        raise IngestError("a stored chunk has no data")
    kind, body = data[0], data[1:]
    try:
        if kind in (ZSTD_DOUBLES, ZSTD_STRINGS):
            body = _decompressor.decompress(body)
        if kind == ZSTD_DOUBLES:
            body = np.frombuffer(body, dtype=np.uint8).reshape(8, -1).T.tobytes()
    except zstandard.ZstdError as exc:
        raise IngestError(f"a stored chunk does not decompress: {exc}") from exc
    if len(body) < 8 * count:
        raise IngestError(f"a stored chunk of {count} samples has {len(body)} bytes")
    t_ns = np.cumsum(np.frombuffer(body, dtype="<i8", count=count)) + np.int64(t_first)
    if kind in (RAW_DOUBLES, ZSTD_DOUBLES):
        values = np.frombuffer(body, dtype="<f8", count=count, offset=8 * count)
        return t_ns.astype(np.int64, copy=False), values.astype(np.float64, copy=False)
    if kind in (RAW_STRINGS, ZSTD_STRINGS):
        texts = json.loads(body[8 * count :].decode("utf-8"))
        if not isinstance(texts, list) or len(texts) != count:
            raise IngestError(f"a stored string chunk does not hold {count} values")
        return t_ns.astype(np.int64, copy=False), [str(x) for x in texts]
    raise IngestError(f"a stored chunk has the unknown format {kind}")
