"""The durable outbox: the uplink's :class:`~tcu.uplink.Outbox` protocol over the on-disk spool.

The agent wires the two adapters here, so that ``uplink`` and ``spool`` never
import each other. A spooled batch is sent as it was stored; a *tombstone* (a
batch the spool evicted by priority, expired by age, or lost to corrupt bytes)
is sent as a batch without samples that carries a ``DataLoss`` record, so the
sequence stays gapless, the ingest's contiguous ack watermark keeps moving and
the loss is reported upstream instead of being silent.

When the disk refuses an append (full, read-only), the batch waits in a bounded
in-memory backlog and is appended again, in order, before the next batch; the
spool assigns a sequence number only to what it stored, so nothing is ever sent
twice under two numbers. Policy when the backlog is full: the oldest waiting
batch is dropped, counted and logged.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator

from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.spool import Spool, SpoolError, SpoolRecord
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
    def __init__(self, spool: Spool, *, vehicle_id: str, backlog_batches: int = 1000) -> None:
        self._spool = spool
        self._vehicle_id = vehicle_id
        stats = spool.stats()
        self._acked = stats.acked_seq
        self._next = stats.next_seq
        self._backlog: deque[tuple[bytes, int, int]] = deque()
        self._backlog_max = backlog_batches
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

    def append(self, payload: bytes, *, priority: int, created_ns: int) -> int:
        """Spool the batch (after any backlog); returns the last seq stored, 0 when it waits in memory."""
        if len(self._backlog) >= self._backlog_max:
            self._backlog.popleft()
            self.backlog_dropped += 1
            log.error(
                "spool backlog full: dropped the oldest waiting batch (%d dropped)", self.backlog_dropped
            )
        self._backlog.append((payload, priority, created_ns))
        seq = 0
        while self._backlog:
            waiting, prio, created = self._backlog[0]
            try:
                record = self._spool.append(waiting, priority=prio, created_ns=created)
            except SpoolError as exc:
                self.append_errors += 1
                self.last_error = str(exc)
                if not self._failing:
                    log.error("spool: %s; %d batches wait in memory and are retried", exc, len(self._backlog))
                self._failing = True
                return 0
            if self._failing:
                log.warning(
                    "spool: appending works again; backlog of %d batches is draining", len(self._backlog)
                )
                self._failing = False
                self.last_error = ""
            self._backlog.popleft()
            seq = record.seq
            self._next = seq + 1
        return seq

    def pending(self, after_seq: int = 0) -> Iterator[tuple[int, bytes]]:
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
        self._spool.ack(up_to_seq)
        removed = up_to_seq - self._acked
        self._acked = up_to_seq
        return removed

    def unacked(self) -> int:
        return self._next - 1 - self._acked + len(self._backlog)

    def space(self) -> int:
        # The spool evicts by priority instead of refusing; the backlog bounds itself.
        return self._backlog_max - len(self._backlog)
