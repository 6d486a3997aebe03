"""Live fan-out of stored batches to Fleet.Subscribe streams.

The Upload servicer publishes each batch after its commit (never a duplicate).
Every subscriber has its own bounded queue of ``subscriber_queue`` updates.
A batch's captured events travel in the same update (``SignalUpdate.events``,
absolute times, signal names). A signal filter applies to event columns too: a
filtered subscriber gets an event only with its wanted columns, and only if at
least one of them is in the event. A batch with nothing for a subscriber is not sent.

Policy when a subscriber falls behind: once its queue is full, the next update
it would get is counted as missed instead of queued, and the subscriber's next
:meth:`Subscription.get` raises :class:`SubscriberOverflow` naming how many
updates it missed (Fleet.Subscribe ends the stream with RESOURCE_EXHAUSTED).
A subscriber never sees a stream with silent gaps; it resubscribes and uses
Fleet.Query to fill the hole. Publishing never waits for a subscriber.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.errors import IngestError
from tcu.ingest._events import capture_pb
from tcu.ingest.model import Batch, ValueKind

__all__ = ["SubscriberOverflow", "Subscription", "UpdateHub"]

log = logging.getLogger(__name__)


class SubscriberOverflow(IngestError):
    """A live subscriber fell behind by more than its queue; the message says how much it missed."""

    def __init__(self, message: str, *, missed: int) -> None:
        super().__init__(message)
        self.missed = missed


class Subscription:
    """One subscriber's queue; get it from :meth:`UpdateHub.subscribe` and close it when done."""

    def __init__(
        self, hub: UpdateHub, vehicle_ids: frozenset[str], signals: frozenset[str], size: int
    ) -> None:
        self._hub = hub
        self.vehicle_ids = vehicle_ids
        self.signals = signals
        self.size = size
        self._queue: asyncio.Queue[fleet_pb.SignalUpdate | None] = asyncio.Queue(maxsize=size)
        self.missed = 0
        self._ended = False

    def _offer(self, update: fleet_pb.SignalUpdate) -> None:
        if self.missed:
            self.missed += 1
            return
        try:
            self._queue.put_nowait(update)
        except asyncio.QueueFull:
            self.missed = 1

    def _end(self) -> None:
        self._ended = True
        if self._queue.empty():
            self._queue.put_nowait(None)

    async def get(self) -> fleet_pb.SignalUpdate | None:
        """The next update; None once the hub is closed (the server is stopping).

        Raises :class:`SubscriberOverflow` once an update had to be missed.
        """
        self._check()
        if self._ended and self._queue.empty():
            return None
        update = await self._queue.get()
        self._check()
        return update

    def _check(self) -> None:
        if self.missed:
            raise SubscriberOverflow(
                f"subscriber fell behind by more than its queue of {self.size} updates and missed"
                f" {self.missed} updates; subscribe again and use Query to fill the gap",
                missed=self.missed,
            )

    def close(self) -> None:
        self._hub._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class UpdateHub:
    """Fan-out of stored batches as ``SignalUpdate`` messages, filtered per subscriber."""

    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._subscribers: set[Subscription] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._subscribers)

    def subscribe(self, vehicle_ids: Iterable[str] = (), signals: Iterable[str] = ()) -> Subscription:
        """A new subscriber; empty filters mean all vehicles or all signals."""
        sub = Subscription(self, frozenset(vehicle_ids), frozenset(signals), self._queue_size)
        if self._closed:
            sub._end()
        else:
            self._subscribers.add(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def publish(self, batch: Batch) -> None:
        """Offer a stored batch to every matching subscriber (never blocks)."""
        if not self._subscribers:
            return
        full: fleet_pb.SignalUpdate | None = None
        by_name: dict[str, fleet_pb.SignalSeries] = {}
        for sub in list(self._subscribers):
            if sub.vehicle_ids and batch.vehicle_id not in sub.vehicle_ids:
                continue
            if full is None:
                full, by_name = _update(batch)
                if not full.series and not full.events:
                    return
            if not sub.signals:
                sub._offer(full)
                continue
            picked = [series for name, series in by_name.items() if name in sub.signals]
            events = [
                capture_pb(event, sub.signals)
                for event in batch.events
                if any(column.signal.name in sub.signals for column in event.columns)
            ]
            if picked or events:
                sub._offer(
                    fleet_pb.SignalUpdate(
                        vehicle_id=batch.vehicle_id,
                        boot_epoch=batch.boot_epoch,
                        seq=batch.seq,
                        series=picked,
                        events=events,
                    )
                )

    def close(self) -> None:
        """End every subscription (their next get returns None). Idempotent."""
        self._closed = True
        for sub in self._subscribers:
            sub._end()
        self._subscribers.clear()


def _update(batch: Batch) -> tuple[fleet_pb.SignalUpdate, dict[str, fleet_pb.SignalSeries]]:
    by_name: dict[str, fleet_pb.SignalSeries] = {}
    for column in batch.columns:
        if not column.t_ns:
            continue
        signal = column.signal
        series = fleet_pb.SignalSeries(name=signal.name, unit=signal.unit, t_ns=column.t_ns)
        if signal.kind is ValueKind.DOUBLE:
            series.double_values.extend(column.double_values)
        else:
            series.string_values.extend(column.string_values)
        by_name[signal.name] = series
    update = fleet_pb.SignalUpdate(
        vehicle_id=batch.vehicle_id,
        boot_epoch=batch.boot_epoch,
        seq=batch.seq,
        series=by_name.values(),
        events=[capture_pb(event) for event in batch.events],
    )
    return update, by_name
