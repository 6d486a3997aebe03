"""Live fan-out of stored batches to Fleet.Subscribe streams.

The Upload servicer publishes each batch after its commit (never a duplicate).
Every subscriber has its own bounded queue of ``subscriber_queue`` updates.
A batch's captured events travel in the same update (``SignalUpdate.events``,
absolute times, signal names). A signal filter applies to event columns too: a
filtered subscriber gets an event only with its wanted columns, and only if at
least one of them is in the event. A batch with nothing for a subscriber is not sent.

Policy when a subscriber falls behind: its queue holds at most ``queue_size``
updates and ``max_bytes`` bytes (serialised size). An update that does not fit
overflows the subscriber: the updates still queued for it are dropped at once (so
what the ingest holds for it stays under its budget), they and every later one are
counted as missed, the subscription's ``on_overflow`` callback runs (Fleet.Subscribe
cancels its handler there, which may be blocked sending to a client that does not
read) and its next :meth:`Subscription.get` raises :class:`SubscriberOverflow` naming
how many updates it missed (Fleet.Subscribe ends the stream with RESOURCE_EXHAUSTED).
A subscriber never sees a stream with silent gaps; it resubscribes and uses
Fleet.Query to fill the hole. Publishing never waits for a subscriber.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

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
        self,
        hub: UpdateHub,
        vehicle_ids: frozenset[str],
        signals: frozenset[str],
        size: int,
        *,
        max_bytes: int,
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        self._hub = hub
        self.vehicle_ids = vehicle_ids
        self.signals = signals
        self.size = size
        self.max_bytes = max_bytes
        self._queue: asyncio.Queue[tuple[fleet_pb.SignalUpdate, int] | None] = asyncio.Queue(maxsize=size)
        self.queued_bytes = 0
        """Serialised bytes of the updates queued for this subscriber now."""
        self.peak_bytes = 0
        self._queued_at: deque[float] = deque()
        """``time.monotonic()`` of each queued update, oldest first (the subscriber's lag)."""
        self.missed = 0
        self._on_overflow = on_overflow
        self._ended = False

    def _offer(self, update: fleet_pb.SignalUpdate, size: int) -> None:
        if self.missed:
            self.missed += 1
            return
        if self._queue.full() or self.queued_bytes + size > self.max_bytes:
            self._overflow()
            return
        self._queue.put_nowait((update, size))
        self._queued_at.append(time.monotonic())
        self.queued_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.queued_bytes)

    def _overflow(self) -> None:
        """Drop what is queued (counted as missed) and tell the handler at once."""
        dropped = 0
        while not self._queue.empty():
            if self._queue.get_nowait() is not None:
                dropped += 1
        self.queued_bytes = 0
        self._queued_at.clear()
        self.missed = 1 + dropped
        self._hub.overflows += 1
        if self._ended:
            self._queue.put_nowait(None)
        if self._on_overflow is not None:
            self._on_overflow()

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
        item = await self._queue.get()
        self._check()
        if item is None:
            return None
        update, size = item
        self.queued_bytes -= size
        if self._queued_at:
            self._queued_at.popleft()
        return update

    @property
    def queued_updates(self) -> int:
        """Updates waiting for this subscriber now."""
        return len(self._queued_at)

    def lag_s(self, now: float | None = None) -> float:
        """How long the oldest update still queued for this subscriber has waited (0 when none)."""
        if not self._queued_at:
            return 0.0
        return max(0.0, (time.monotonic() if now is None else now) - self._queued_at[0])

    def get_nowait_check(self) -> None:
        """Raise :class:`SubscriberOverflow` if the subscriber has missed updates."""
        self._check()

    def _check(self) -> None:
        if self.missed:
            raise SubscriberOverflow(
                f"subscriber fell behind by more than its queue of {self.size} updates or"
                f" {self.max_bytes} bytes and missed {self.missed} updates; subscribe again and"
                " use Query to fill the gap",
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

    def __init__(self, queue_size: int, max_bytes: int = 32 * 1024 * 1024) -> None:
        self._queue_size = queue_size
        self._max_bytes = max_bytes
        self._subscribers: set[Subscription] = set()
        self._closed = False
        self.overflows = 0
        """Subscribers ended because they fell behind (queue or byte budget)."""

    def __len__(self) -> int:
        return len(self._subscribers)

    @property
    def subscriptions(self) -> frozenset[Subscription]:
        return frozenset(self._subscribers)

    def subscribe(
        self,
        vehicle_ids: Iterable[str] = (),
        signals: Iterable[str] = (),
        *,
        on_overflow: Callable[[], None] | None = None,
    ) -> Subscription:
        """A new subscriber; empty filters mean all vehicles or all signals.

        ``on_overflow()`` runs (on the loop, inside :meth:`publish`) when it falls behind.
        """
        sub = Subscription(
            self,
            frozenset(vehicle_ids),
            frozenset(signals),
            self._queue_size,
            max_bytes=self._max_bytes,
            on_overflow=on_overflow,
        )
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
        full_size = 0
        by_name: dict[str, fleet_pb.SignalSeries] = {}
        for sub in list(self._subscribers):
            if sub.vehicle_ids and batch.vehicle_id not in sub.vehicle_ids:
                continue
            if full is None:
                full, by_name = _update(batch)
                if not full.series and not full.events:
                    return
                full_size = full.ByteSize()
            if not sub.signals:
                sub._offer(full, full_size)
                continue
            picked = [series for name, series in by_name.items() if name in sub.signals]
            events = [
                capture_pb(event, sub.signals)
                for event in batch.events
                if any(column.signal.name in sub.signals for column in event.columns)
            ]
            if picked or events:
                update = fleet_pb.SignalUpdate(
                    vehicle_id=batch.vehicle_id,
                    boot_epoch=batch.boot_epoch,
                    seq=batch.seq,
                    series=picked,
                    events=events,
                )
                sub._offer(update, update.ByteSize())

    def overflow_all(self, why: str) -> None:
        """End every subscriber as if it had fallen behind (its next get raises
        :class:`SubscriberOverflow` with a count): the feed of this hub lost updates (``why``),
        so no subscriber may go on with a silent gap."""
        if not self._subscribers:
            return
        log.error("live updates lost upstream (%s): ending %d subscribers", why, len(self._subscribers))
        for sub in list(self._subscribers):
            if not sub.missed:
                sub._overflow()

    def close(self) -> None:
        """End every subscription (their next get returns None). Idempotent."""
        self._closed = True
        for sub in self._subscribers:
            sub._end()
        self._subscribers.clear()


def _update(batch: Batch) -> tuple[fleet_pb.SignalUpdate, dict[str, fleet_pb.SignalSeries]]:
    by_name: dict[str, fleet_pb.SignalSeries] = {}
    for column in batch.columns:
        if not len(column):
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
