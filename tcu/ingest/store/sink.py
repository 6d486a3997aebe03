"""The :class:`Sink` protocol: what the ingest needs of a store (SQLite now, NATS JetStream later).

The result and query types it speaks (:class:`~tcu.ingest.model.StoreResult`,
:class:`~tcu.ingest.model.HistoryQuery`, :class:`~tcu.ingest.model.Series`, ...) live in
:mod:`tcu.ingest.model`, shared with the servicer and the Fleet service.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from tcu.ingest.model import (
    Batch,
    CampaignRef,
    Capture,
    HistoryQuery,
    QuarantinedBatch,
    Series,
    StoreResult,
    VehicleSummary,
)

__all__ = ["Sink"]


@runtime_checkable
class Sink(Protocol):
    """Where the ingest stores batches and reads history (SQLite now, NATS JetStream later)."""

    async def store(self, batch: Batch) -> StoreResult:
        """Store a validated batch; return once it is durable (or was stored before)."""
        ...

    def query(self, query: HistoryQuery) -> AsyncIterator[list[Series]]:
        """Chunks of at most ``query.chunk_samples`` samples, time-ordered per signal.

        Raises :class:`~tcu.ingest.model.VehicleNotFound` for a vehicle without data.
        """
        ...

    def events(self, query: HistoryQuery) -> AsyncIterator[list[Capture]]:
        """Stored events of ``query.vehicle_id`` whose trigger time is in ``[start_ns, end_ns)``.

        In trigger-time order, in chunks of about ``query.chunk_samples`` samples (at
        least one event each); a non-empty ``query.signals`` keeps only those columns
        and only events with at least one of them.
        """
        ...

    async def quarantine(self, batch: QuarantinedBatch) -> StoreResult:
        """Keep a batch with malformed content; return once it is durable (or was kept/stored before).

        The key counts like a stored batch for ``acked_seq`` and for dedup.
        """
        ...

    async def store_checkin(self, vehicle_id: str, campaigns: tuple[CampaignRef, ...]) -> None:
        """Durably replace the vehicle's check-in (the campaigns it runs now)."""
        ...

    async def list_vehicles(self) -> list[VehicleSummary]:
        """Every vehicle with stored batches or a check-in, by vehicle id."""
        ...

    async def aclose(self) -> None:
        """Finish queued writes, then release everything. Idempotent."""
        ...
