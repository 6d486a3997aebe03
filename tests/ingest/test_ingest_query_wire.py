"""Query's hand-written SignalUpdate bytes equal protobuf's own serialization of the same content."""

from __future__ import annotations

import numpy as np

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.ingest._events import series_pb
from tcu.ingest._query_wire import packed_varints, signal_update_bytes
from tcu.ingest.model import Series, ValueKind


def test_update_bytes_equal_protobuf_serialization() -> None:
    rng = np.random.default_rng(5)
    times = np.sort(rng.integers(-(2**62), 2**62, 500)).astype(np.int64)
    times[:6] = [-(2**63), -1, 0, 1, 127, 128]  # every varint length, negatives as 10 bytes
    times[-3:] = [2**56, 1_733_500_000_000_000_000, 2**63 - 1]
    doubles = rng.normal(0, 1e6, 500)
    doubles[3] = np.nan
    series = [
        Series("Vehicle.Speed", "km/h", ValueKind.DOUBLE, times, doubles, []),
        Series("Vehicle.Gear", "", ValueKind.STRING, times[:4], np.empty(0), ["P", "", "D", "é"]),
        Series("Vehicle.Empty", "x", ValueKind.DOUBLE, times[:0], doubles[:0], []),
    ]
    expected = fleet_pb.SignalUpdate(vehicle_id="veh-1", series=[series_pb(s) for s in series])
    assert signal_update_bytes("veh-1", series) == expected.SerializeToString()
    parsed = fleet_pb.SignalUpdate.FromString(signal_update_bytes("veh-1", series))
    assert list(parsed.series[0].t_ns) == times.tolist()
    assert np.array_equal(np.asarray(parsed.series[0].double_values), doubles, equal_nan=True)
    assert signal_update_bytes("", []) == b""


def test_packed_varints_of_every_length() -> None:
    values = np.array([0, 1, 2**7 - 1, 2**7, 2**14, 2**63 - 1, -1, -(2**63)], dtype=np.int64)
    message = fleet_pb.SignalSeries(t_ns=values.tolist())
    wire = message.SerializeToString()
    assert wire[2:] == packed_varints(values)  # tag 0x1a, one length byte (52 < 128), then the payload
