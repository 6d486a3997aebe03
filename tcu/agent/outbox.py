"""The durable outbox: the uplink's :class:`~tcu.uplink.Outbox` protocol over the on-disk spool.

The agent wires the two adapters here, so that ``uplink`` and ``spool`` never
import each other. A spooled batch is sent as it was stored; a *tombstone* (a
batch the spool evicted by priority, expired by age, or lost to corrupt bytes)
is sent as a batch without samples that carries a ``DataLoss`` record, so the
sequence stays gapless, the ingest's contiguous ack watermark keeps moving and
the loss is reported upstream instead of being silent.

On a full disk the spool itself makes room: it evicts by priority (tombstones, as
above) and tries the append again. Only when that does not help (the disk is full of
other files, read-only, failing) does a batch wait in a bounded in-memory backlog; it is
appended again, in order, before the next batch, and whenever the uplink looks for work or
an ack freed space. The spool assigns a sequence number only to what it stored, so nothing
is ever sent twice under two numbers. Bound and policy of the backlog: at most
``backlog_bytes`` of batches (and ``backlog_batches`` batches) plus the one being
appended; beyond that the oldest waiting batch is dropped, and so is a batch larger than
the spool's ``max_bytes``. A dropped batch is never silent: it is counted
(``backlog_dropped``), logged, and becomes an ``"unspooled"`` tombstone, so the ingest
receives a ``DataLoss`` in its place. Until the disk takes that tombstone the loss waits in
memory: exactly, one entry per batch, for the first ``max_pending_losses`` of them, then
merged per priority (still one tombstone per lost batch, with the first one's time and the
mean size).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator

from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.spool import Spool, SpoolError, SpoolRecord, SpoolTooLargeError
from tcu.uplink import OutboxReadError

__all__ = ["SpoolOutbox"]

log = logging.getLogger(__name__)


_MAX_REASON_CHARS = 1024  # well below the ingest's max_string_bytes (4096 by default)


def _loss_reason(record: SpoolRecord) -> str:
    """``evicted``, ``expired`` or ``corrupt``, followed for a corruption found at run time by
    where it was (``corrupt: <segment> offset <n>: fails its checksum on read``)."""
    reason = str(record.tombstone)
    if record.detail:
        reason = f"{reason}: {record.detail}"
    return reason[:_MAX_REASON_CHARS]


class SpoolOutbox:
    def __init__(
        self,
        spool: Spool,
        *,
        vehicle_id: str,
        backlog_bytes: int = 16 * 1024 * 1024,
        backlog_batches: int = 1000,
        max_pending_losses: int = 100_000,
    ) -> None:
        self._spool = spool
        self._vehicle_id = vehicle_id
        stats = spool.stats()
        self._acked = stats.acked_seq
        self._next = stats.next_seq
        self._backlog: deque[tuple[bytes, int, int]] = deque()
        self._backlog_size = 0
        self._backlog_max_bytes = backlog_bytes
        self._backlog_max = backlog_batches
        # Batches dropped before they reached the disk, whose tombstones are still to be written:
        # (priority, created_ns, length) each, then per priority [count, first created_ns, bytes].
        self._losses: deque[tuple[int, int, int]] = deque()
        self._losses_max = max_pending_losses
        self._merged_losses: dict[int, list[int]] = {}
        self.backlog_dropped = 0
        self.append_errors = 0
        self.last_error = ""
        self._failing = False

    @property
    def boot_epoch(self) -> int:
        return self._spool.boot_epoch

    @property
    def acked_seq(self) -> int:
        return self._acked

    @property
    def spool(self) -> Spool:
        return self._spool

    def backlog_bytes(self) -> int:
        """Bytes of batches waiting in memory for the disk."""
        return self._backlog_size

    def pending_losses(self) -> int:
        """Dropped batches whose ``"unspooled"`` tombstone is not on disk yet."""
        return len(self._losses) + sum(entry[0] for entry in self._merged_losses.values())

    def append(self, payload: bytes, *, priority: int, created_ns: int) -> int:
        """Spool the batch (after any losses and backlog); the last seq stored, 0 when it waits."""
        self._backlog.append((payload, priority, created_ns))
        self._backlog_size += len(payload)
        while len(self._backlog) > 1 and (
            self._backlog_size > self._backlog_max_bytes or len(self._backlog) > self._backlog_max
        ):
            dropped, prio, created = self._backlog.popleft()
            self._backlog_size -= len(dropped)
            self._lose(prio, created, len(dropped), "the in-memory backlog is full")
        return self._drain()

    def _lose(self, priority: int, created_ns: int, length: int, why: str) -> None:
        self.backlog_dropped += 1
        if self.backlog_dropped <= 10 or self.backlog_dropped % 1000 == 0:  # loud, but no flood
            log.error(
                "spool: dropped a batch of %d bytes (priority %d) that could not be spooled: %s; "
                "it is reported upstream as lost (%d dropped so far; logged for the first 10, "
                "then every 1000th)",
                length,
                priority,
                why,
                self.backlog_dropped,
            )
        if len(self._losses) < self._losses_max:
            self._losses.append((priority, created_ns, length))
            return
        merged = self._merged_losses.setdefault(priority, [0, created_ns, 0])
        merged[0] += 1
        merged[2] += length

    def _drain(self) -> int:
        """Write waiting tombstones, then waiting batches, in order, while the spool takes them."""
        seq = 0
        try:
            while self._losses:
                prio, created, length = self._losses[0]
                seq = self._spool.append_tombstone(priority=prio, created_ns=created, original_len=length).seq
                self._losses.popleft()
                self._next = seq + 1
            for prio in sorted(self._merged_losses):
                merged = self._merged_losses[prio]
                while merged[0] > 0:
                    seq = self._spool.append_tombstone(
                        priority=prio, created_ns=merged[1], original_len=merged[2] // merged[0]
                    ).seq
                    merged[2] -= merged[2] // merged[0]
                    merged[0] -= 1
                    self._next = seq + 1
                del self._merged_losses[prio]
            while self._backlog:
                waiting, prio, created = self._backlog[0]
                try:
                    record = self._spool.append(waiting, priority=prio, created_ns=created)
                except SpoolTooLargeError as exc:
                    self._backlog.popleft()
                    self._backlog_size -= len(waiting)
                    self._lose(prio, created, len(waiting), str(exc))
                    continue
                self._backlog.popleft()
                self._backlog_size -= len(waiting)
                seq = record.seq
                self._next = seq + 1
        except SpoolError as exc:
            self.append_errors += 1
            self.last_error = str(exc)
            if not self._failing:
                log.error(
                    "spool: %s; %d batches (%d bytes) wait in memory and are retried",
                    exc,
                    len(self._backlog),
                    self._backlog_size,
                )
            self._failing = True
            return 0
        if self._failing:
            log.warning("spool: appending works again; the in-memory backlog has drained")
            self._failing = False
            self.last_error = ""
        return seq

    def pending(self, after_seq: int = 0) -> Iterator[tuple[int, bytes]]:
        if self._backlog or self._losses or self._merged_losses:
            self._drain()  # the uplink looks for work: retry what waits in memory
        # A record that fails its checksum comes from the spool as a "corrupt" tombstone; what
        # is left is a segment that cannot be read at all, which the uplink retries later.
        try:
            for record in self._spool.pending(after_seq):
                yield record.seq, self._payload(record)
        except SpoolError as exc:
            raise OutboxReadError(str(exc)) from exc

    def _payload(self, record: SpoolRecord) -> bytes:
        if not record.is_tombstone:
            return record.payload
        loss = telemetry_pb.TelemetryBatch(
            vehicle_id=self._vehicle_id,
            loss=telemetry_pb.DataLoss(
                reason=_loss_reason(record),
                priority=record.priority,
                created_ns=record.created_ns,
                payload_bytes=record.original_len,
            ),
        )
        return loss.SerializeToString()

    def ack(self, up_to_seq: int) -> int:
        if up_to_seq <= self._acked:
            return 0
        try:
            self._spool.ack(up_to_seq)
        except SpoolError as exc:  # the watermark file cannot be written: the ack comes again
            self.last_error = str(exc)
            log.error("spool: cannot record the ack of seq %d: %s", up_to_seq, exc)
            return 0
        removed = up_to_seq - self._acked
        self._acked = up_to_seq
        if self._backlog or self._losses or self._merged_losses:
            self._drain()  # the ack may have freed disk space
        return removed

    def unacked(self) -> int:
        return self._next - 1 - self._acked + len(self._backlog) + self.pending_losses()

    def space(self) -> int:
        # Never 0: the spool evicts by priority instead of refusing, and the backlog drops its
        # oldest batch (counted, reported upstream) instead of stalling the pipeline, which
        # would lose CAN frames in the bus buffers without a count.
        return max(1, self._backlog_max - len(self._backlog))
