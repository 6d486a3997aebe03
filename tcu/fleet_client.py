"""Read back what the ingest stored for a vehicle: the one ``Fleet.Query`` loop.

``Fleet.Query`` streams a vehicle's history in chunks; each chunk holds parts of several
series. :func:`query_series` gathers the parts per series name into arrays, for the demo,
the chaos run, the benchmarks and the tests alike::

    async with grpc.aio.insecure_channel(target) as channel:
        stored = await query_series(channel, "WTCUSIM0000000001")
    t_ns, values = stored["Vehicle.Speed"].t_ns, stored["Vehicle.Speed"].values
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np
import numpy.typing as npt

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc

__all__ = ["StoredSeries", "query_series", "series_pairs"]


@dataclass(frozen=True, slots=True)
class StoredSeries:
    """One stored series: source times, and its double or its string values (the other is empty)."""

    t_ns: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    strings: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.t_ns.shape[0])


async def query_series(channel: grpc.aio.Channel, vehicle_id: str) -> dict[str, StoredSeries]:
    """Every series the ingest holds for ``vehicle_id`` (``Fleet.Query`` over ``channel``), by name."""
    stub = fleet_grpc.FleetStub(channel)
    times: dict[str, list[int]] = {}
    doubles: dict[str, list[float]] = {}
    strings: dict[str, list[str]] = {}
    async for update in stub.Query(fleet_pb.QueryRequest(vehicle_id=vehicle_id)):
        for s in update.series:
            times.setdefault(s.name, []).extend(s.t_ns)
            doubles.setdefault(s.name, []).extend(s.double_values)
            strings.setdefault(s.name, []).extend(s.string_values)
    return {
        name: StoredSeries(np.array(t, np.int64), np.array(doubles[name], np.float64), tuple(strings[name]))
        for name, t in times.items()
    }


def series_pairs(
    stored: dict[str, StoredSeries],
) -> dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]:
    """``name → (t_ns, values)``, the shape the ground-truth checks take."""
    return {name: (s.t_ns, s.values) for name, s in stored.items()}
