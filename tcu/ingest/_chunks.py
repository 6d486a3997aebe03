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

__all__ = [
    "decode_chunk",
    "decode_double_chunks",
    "encode_double_columns",
    "encode_doubles",
    "encode_strings",
    "sort_column",
]

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


def decode_double_chunks(
    chunks: Sequence[tuple[int, int, int, bytes]],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Times, values and chunk ids of many double chunks ``(t_first, chunk_id, count, data)`` at once.

    Each chunk's samples come out in its stored order, equal to :func:`decode_chunk`'s;
    the chunks are grouped by format and length (one zstd call per chunk, then one
    un-shuffle and one cumulative sum per group). A chunk of strings or of an unexpected
    size is decoded alone by :func:`decode_chunk`.
    """
    groups: dict[tuple[int, int], list[tuple[int, int, bytes]]] = {}
    single: list[tuple[int, int, int, bytes]] = []
    for t_first, chunk_id, count, data in chunks:
        kind = data[0] if data else -1
        if kind not in (RAW_DOUBLES, ZSTD_DOUBLES) or count < 1:
            single.append((t_first, chunk_id, count, data))
            continue
        try:
            body = _decompressor.decompress(data[1:]) if kind == ZSTD_DOUBLES else data[1:]
        except zstandard.ZstdError as exc:
            raise IngestError(f"a stored chunk does not decompress: {exc}") from exc
        if len(body) != 16 * count:
            single.append((t_first, chunk_id, count, data))
            continue
        groups.setdefault((kind, count), []).append((t_first, chunk_id, body))
    times: list[npt.NDArray[np.int64]] = []
    values: list[npt.NDArray[np.float64]] = []
    ids: list[npt.NDArray[np.int64]] = []
    for (kind, n), members in groups.items():
        raw = np.frombuffer(b"".join(body for _, _, body in members), dtype=np.uint8)
        if kind == ZSTD_DOUBLES:  # each body is 8 rows of 2n bytes (byte k of every word)
            block = np.ascontiguousarray(raw.reshape(len(members), 8, 2 * n).transpose(0, 2, 1))
        else:
            block = raw.reshape(len(members), 2 * n, 8)
        deltas = block[:, :n, :].copy().view("<i8").reshape(len(members), n)
        firsts = np.fromiter((t for t, _, _ in members), dtype=np.int64, count=len(members))
        times.append((np.cumsum(deltas, axis=1) + firsts[:, None]).astype(np.int64).ravel())
        values.append(block[:, n:, :].copy().view("<f8").reshape(-1).astype(np.float64, copy=False))
        chunk_ids = np.fromiter((c for _, c, _ in members), dtype=np.int64, count=len(members))
        ids.append(np.repeat(chunk_ids, n))
    for t_first, chunk_id, count, data in single:
        t_ns, chunk_values = decode_chunk(t_first, count, data)
        if isinstance(chunk_values, list):
            raise IngestError("decode_double_chunks was given a chunk of strings")
        times.append(t_ns)
        values.append(chunk_values)
        ids.append(np.full(len(t_ns), chunk_id, dtype=np.int64))
    if not times:
        return np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.int64)
    return np.concatenate(times), np.concatenate(values), np.concatenate(ids)
