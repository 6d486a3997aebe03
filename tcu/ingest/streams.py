"""Bounds on concurrent streams: overall, and per identity (a vehicle, a backend).

Upload counts once its Hello named the vehicle (under mTLS the certificate's); Fleet.Subscribe
counts from its start under the caller's identity. A stream beyond a cap is refused with
RESOURCE_EXHAUSTED and a ``retry-after-ms`` trailer (the agent honours it); nothing waits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tcu.errors import IngestError

__all__ = ["StreamLimiter", "StreamsExhausted"]

RETRY_AFTER_MS = 2000
"""Suggested wait before a refused client tries again."""


class StreamsExhausted(IngestError):
    """A new stream would pass a cap; the message names the cap and its value."""


class StreamLimiter:
    """``with limiter.open(kind, identity):`` around a stream; raises :class:`StreamsExhausted`."""

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
    def open(self, kind: str, identity: str) -> Iterator[None]:
        held = self._open.get(identity, 0)
        if held >= self.max_per_identity:
            self.refused += 1
            raise StreamsExhausted(
                f"{kind} {identity} has {held} streams open, max_streams_per_identity is"
                f" {self.max_per_identity}; close one or retry later"
            )
        if self.total >= self.max_streams:
            self.refused += 1
            raise StreamsExhausted(
                f"the ingest has {self.total} streams open, max_streams is {self.max_streams}; retry later"
            )
        self._open[identity] = held + 1
        self.total += 1
        try:
            yield
        finally:
            self.total -= 1
            left = self._open[identity] - 1
            if left:
                self._open[identity] = left
            else:
                del self._open[identity]
