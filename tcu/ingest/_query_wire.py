"""``Fleet.Query`` answers written straight from numpy columns: the wire form of ``SignalUpdate``.

Query's samples leave the store as arrays (:class:`~tcu.ingest.model.Series`); building
protobuf messages from them would turn every sample into a Python number twice (the list,
then the repeated field). Here each ``SignalSeries`` is written in protobuf's wire format
directly: ``t_ns`` as packed varints (int64, two's complement for negative times) encoded
by whole-array numpy, ``double_values`` as packed little-endian float64 (the array's bytes),
strings one field each. Fields are written in number order and empty ones left out, as
protobuf's own serializer does, so the bytes equal ``SignalUpdate.SerializeToString()`` of
the same content (tested); any client parses them as the generated message.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from tcu.ingest.model import Series, ValueKind
from tcu.wire import varint

__all__ = ["packed_varints", "series_bytes", "signal_update_bytes"]


def packed_varints(values: npt.NDArray[np.int64]) -> bytes:
    """The payload of a packed ``repeated int64``: each value as a varint of its 64-bit pattern."""
    u = np.ascontiguousarray(values, dtype=np.int64).view(np.uint64)
    if not len(u):
        return b""
    sizes = np.ones(len(u), dtype=np.int64)
    for k in range(1, 10):
        sizes += u >= np.uint64(1 << (7 * k))
    ends = np.cumsum(sizes)
    starts = ends - sizes
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    rest = u.copy()
    for k in range(10):
        live = np.flatnonzero(sizes > k)
        if not len(live):
            break
        byte = (rest[live] & np.uint64(0x7F)).astype(np.uint8)
        byte[sizes[live] > k + 1] |= 0x80
        out[starts[live] + k] = byte
        rest >>= np.uint64(7)
    return out.tobytes()


def _field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def series_bytes(series: Series) -> bytes:
    """One ``SignalSeries`` message (name, unit, t_ns, and double or string values as ``kind`` says)."""
    parts: list[bytes] = []
    if series.name:
        parts.append(_field(1, series.name.encode("utf-8")))
    if series.unit:
        parts.append(_field(2, series.unit.encode("utf-8")))
    times = series.times
    if len(times):
        parts.append(_field(3, packed_varints(times)))
    if series.kind is ValueKind.DOUBLE:
        doubles = series.doubles
        if len(doubles):
            parts.append(_field(4, np.ascontiguousarray(doubles, dtype="<f8").tobytes()))
    else:
        parts.extend(_field(5, text.encode("utf-8")) for text in series.string_values)
    return b"".join(parts)


def signal_update_bytes(vehicle_id: str, series: Sequence[Series]) -> bytes:
    """``SignalUpdate(vehicle_id=..., series=[...])`` in wire format (boot_epoch, seq, events unset)."""
    parts = [_field(1, vehicle_id.encode("utf-8"))] if vehicle_id else []
    parts.extend(_field(4, series_bytes(one)) for one in series)
    return b"".join(parts)
