"""Where encoded batches wait until the ingest acknowledged them.

The :class:`Outbox` protocol is what the uplink needs: a boot epoch, gapless
sequence numbers, the unacked batches in order and an ``ack`` watermark. The
in-memory outbox keeps them in RAM (lost on a crash); the durable spool
implements the same protocol on disk.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Protocol

from tcu.errors import UplinkError

__all__ = ["MemoryOutbox", "Outbox", "OutboxFull", "OutboxReadError"]


class OutboxFull(UplinkError):
    """The outbox holds its maximum of unacked batches."""


class OutboxReadError(UplinkError):
    """The outbox could not read its unacked batches (e.g. an I/O error); the uplink retries
    after its backoff, as after a broken stream."""


class Outbox(Protocol):
    @property
    def boot_epoch(self) -> int: ...

    @property
    def acked_seq(self) -> int:
        """Everything up to this seq of the boot epoch has been acknowledged."""
        ...

    def append(self, payload: bytes, *, priority: int, created_ns: int) -> int: ...

    def pending(self, after_seq: int = 0) -> Iterator[tuple[int, bytes]]:
        """Unacked batches after ``after_seq`` in seq order; may raise :class:`OutboxReadError`."""
        ...

    def ack(self, up_to_seq: int) -> int: ...

    def unacked(self) -> int: ...

    def space(self) -> int: ...


class MemoryOutbox:
    """Unacked batches in RAM, at most ``max_batches`` (then :class:`OutboxFull`)."""

    def __init__(self, *, max_batches: int, boot_epoch: int | None = None) -> None:
        self._epoch = boot_epoch if boot_epoch is not None else time.time_ns()
        self._next = 1
        self._max = max_batches
        self._items: OrderedDict[int, bytes] = OrderedDict()
        self._acked = 0

    @property
    def boot_epoch(self) -> int:
        return self._epoch

    @property
    def acked_seq(self) -> int:
        return self._acked

    def append(self, payload: bytes, *, priority: int, created_ns: int) -> int:
        if len(self._items) >= self._max:
            raise OutboxFull(f"{len(self._items)} unacked batches held in memory (the maximum)")
        seq = self._next
        self._items[seq] = payload
        self._next += 1
        return seq

    def pending(self, after_seq: int = 0) -> Iterator[tuple[int, bytes]]:
        for seq, payload in list(self._items.items()):
            if seq > after_seq:
                yield seq, payload

    def ack(self, up_to_seq: int) -> int:
        removed = 0
        while self._items:
            seq = next(iter(self._items))
            if seq > up_to_seq:
                break
            del self._items[seq]
            removed += 1
        self._acked = max(self._acked, min(up_to_seq, self._next - 1))
        return removed

    def unacked(self) -> int:
        return len(self._items)

    def space(self) -> int:
        return self._max - len(self._items)
