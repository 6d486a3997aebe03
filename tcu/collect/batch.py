"""Accumulate sampled columns and build one columnar ``TelemetryBatch`` at a time."""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt

from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.signals.decoder import SignalColumns

__all__ = ["BatchBuilder"]


class BatchBuilder:
    """Collects samples until ``max_samples`` or ``max_age_ms``, then builds the protobuf once."""

    def __init__(self, *, vehicle_id: str, catalog_id: str, max_samples: int, max_age_ms: int) -> None:
        self.vehicle_id = vehicle_id
        self.catalog_id = catalog_id
        self.max_samples = max_samples
        self.max_age_s = max_age_ms / 1000
        self._times: dict[int, list[npt.NDArray[np.int64]]] = {}
        self._values: dict[int, list[npt.NDArray[np.float64]]] = {}
        self._strings: dict[int, list[tuple[int, str]]] = {}
        self._samples = 0
        self._opened = 0.0

    @property
    def samples(self) -> int:
        return self._samples

    def add(self, columns: SignalColumns) -> None:
        for signal_id, t_ns, values in columns:
            if not len(t_ns):
                continue
            if self._samples == 0:
                self._opened = time.monotonic()
            self._times.setdefault(signal_id, []).append(t_ns)
            self._values.setdefault(signal_id, []).append(values)
            self._samples += len(t_ns)

    def add_strings(self, signal_id: int, samples: list[tuple[int, str]]) -> None:
        """Text samples ``(t_ns, value)`` of one string signal."""
        if not samples:
            return
        if self._samples == 0:
            self._opened = time.monotonic()
        self._strings.setdefault(signal_id, []).extend(samples)
        self._samples += len(samples)

    def full(self) -> bool:
        return self._samples >= self.max_samples

    def due(self, now: float | None = None) -> bool:
        if self._samples == 0:
            return False
        return self.full() or (now if now is not None else time.monotonic()) - self._opened >= self.max_age_s

    def age_s(self) -> float:
        return 0.0 if self._samples == 0 else time.monotonic() - self._opened

    def build(self) -> tuple[bytes, int]:
        """Serialise the pending samples as one batch; returns (bytes, sample count).

        The batch's identity (``boot_epoch``, ``seq``) is not in these bytes: the
        outbox assigns it where the batch becomes durable, and the uplink appends
        both fields when it sends the batch (protobuf merges concatenated fields).
        """
        times = {sid: np.concatenate(parts) for sid, parts in self._times.items()}
        starts = [int(t.min()) for t in times.values()] + [
            min(t for t, _ in v) for v in self._strings.values()
        ]
        base = min(starts)
        batch = telemetry_pb.TelemetryBatch(
            vehicle_id=self.vehicle_id,
            catalog_id=self.catalog_id,
            base_time_ns=base,
            created_ns=time.time_ns(),
        )
        for sid in sorted(times):
            column = batch.columns.add(signal_id=sid)
            column.t_offset_ns.extend((times[sid] - base).tolist())
            column.double_values.extend(np.concatenate(self._values[sid]).tolist())
        for sid in sorted(self._strings):
            samples = sorted(self._strings[sid])
            column = batch.columns.add(signal_id=sid)
            column.t_offset_ns.extend(t - base for t, _ in samples)
            column.string_values.extend(v for _, v in samples)
        count = self._samples
        self._times.clear()
        self._values.clear()
        self._strings.clear()
        self._samples = 0
        return batch.SerializeToString(), count
