"""Bounds on concurrent streams: overall, and per identity (a vehicle, a backend).

Every stream counts in the total from its start; an Upload counts under its vehicle once its
Hello named it (under mTLS the certificate's), and has ``hello_timeout_s`` to send that Hello;
Fleet.Subscribe counts under the caller's identity from its start. A stream beyond a cap is refused with
RESOURCE_EXHAUSTED and a ``retry-after-ms`` trailer (the agent honours it); nothing waits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tcu.errors import IngestError

__all__ = ["StreamLimiter", "StreamSlot", "StreamsExhausted"]

RETRY_AFTER_MS = 2000
"""Suggested wait before a refused client tries again."""


class StreamsExhausted(IngestError):
    """A new stream would pass a cap; the message names the cap and its value."""


class StreamSlot:
    """One stream's place: counted in the total from :meth:`StreamLimiter.reserve`, and under an
    identity once :meth:`bind` named it."""

    def __init__(self, limiter: StreamLimiter) -> None:
        self._limiter = limiter
        self.identity: str | None = None

    def bind(self, kind: str, identity: str) -> None:
        """Count the stream under ``identity``; raises :class:`StreamsExhausted` beyond its cap."""
        limiter = self._limiter
        held = limiter._open.get(identity, 0)
        if held >= limiter.max_per_identity:
            limiter.refused += 1
            raise StreamsExhausted(
                f"{kind} {identity} has {held} streams open, max_streams_per_identity is"
                f" {limiter.max_per_identity}; close one or retry later"
            )
        limiter._open[identity] = held + 1
        self.identity = identity


class StreamLimiter:
    """``with limiter.reserve() as slot: ... slot.bind(kind, identity)`` around a stream.

    :meth:`reserve` counts the stream against ``max_streams`` from its start (also before an
    Upload's Hello arrives); both raise :class:`StreamsExhausted` beyond a cap.
    """

    def __init__(self, *, max_streams: int, max_per_identity: int) -> None:
        self.max_streams = max_streams
        self.max_per_identity = max_per_identity
        self._open: dict[str, int] = {}
        self.total = 0
        self.refused = 0
        """Streams refused since the start (both caps)."""

    def count(self, identity: str) -> int:
        return self._open.get(identity, 0)

    @contextlib.contextmanager
    def reserve(self) -> Iterator[StreamSlot]:
        if self.total >= self.max_streams:
            self.refused += 1
            raise StreamsExhausted(
                f"the ingest has {self.total} streams open, max_streams is {self.max_streams}; retry later"
            )
        self.total += 1
        slot = StreamSlot(self)
        try:
            yield slot
        finally:
            self.total -= 1
            if slot.identity is not None:
                left = self._open[slot.identity] - 1
                if left:
                    self._open[slot.identity] = left
                else:
                    del self._open[slot.identity]

    @contextlib.contextmanager
    def open(self, kind: str, identity: str) -> Iterator[None]:
        """:meth:`reserve` and :meth:`StreamSlot.bind` at once."""
        with self.reserve() as slot:
            slot.bind(kind, identity)
            yield
