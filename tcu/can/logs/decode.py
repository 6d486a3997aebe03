"""Decode :class:`FrameChunk` s with precompiled DBC codecs, a DBC per channel.

Frames are grouped by (channel, arbitration id) and each group is decoded with one call
of its message codec. A frame counts as

* ``decoded`` — its message is in the channel's DBC and cantools would decode it;
* ``unknown`` — no message with that id (normal: a DBC covers part of a real bus);
* ``errors`` — known id, but cantools would raise: payload shorter than the message,
  a multiplexer value without a branch, or a message that can never decode
  (overlapping signals loaded with ``strict=False``);
* ``skipped`` — error and remote frames, or a channel without a DBC.

With ``j1939=True`` extended frames are matched by parameter group number: priority and
source address are ignored, and for PDU1 groups (PF < 240) the destination address too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tcu.can.logs.chunk import FrameChunk
from tcu.signals.codec import DatabaseCodec, Decoded, MessageCodec

__all__ = ["ChunkDecoder", "DecodeCounts", "MessageBlock", "j1939_pgn"]

log = logging.getLogger(__name__)

_EXT = np.uint64(1 << 32)


def j1939_pgn(arbitration_id: npt.NDArray[np.uint32] | int) -> npt.NDArray[np.uint32]:
    """Parameter group number of 29-bit ids (PDU1: the destination byte is zeroed)."""
    ident = np.asarray(arbitration_id, dtype=np.uint32)
    pgn = (ident >> np.uint32(8)) & np.uint32(0x3FFFF)
    pdu1 = ((pgn >> np.uint32(8)) & np.uint32(0xFF)) < 240
    out: npt.NDArray[np.uint32] = np.where(pdu1, pgn & np.uint32(0x3FF00), pgn).astype(np.uint32)
    return out


@dataclass(frozen=True, slots=True)
class MessageBlock:
    """Frames of one message on one channel, decoded: ``rows`` index into the chunk."""

    bus: str
    codec: MessageCodec
    rows: npt.NDArray[np.intp]
    t_ns: npt.NDArray[np.int64]
    arbitration_id: npt.NDArray[np.uint32]
    decoded: Decoded


@dataclass(slots=True)
class DecodeCounts:
    frames: int = 0
    decoded: int = 0
    unknown: int = 0
    errors: int = 0
    skipped: int = 0
    unknown_ids: set[tuple[str, int]] = field(default_factory=set)


class _ChannelCodec:
    def __init__(self, codec: DatabaseCodec, *, j1939: bool) -> None:
        self.codec = codec
        self.j1939 = j1939
        self.by_pgn: dict[int, MessageCodec] = {}
        if j1939:
            for message in codec.messages:
                if message.is_extended:
                    pgn = int(j1939_pgn(message.frame_id))
                    self.by_pgn.setdefault(pgn, message)

    def lookup(self, arbitration_id: int, is_extended: bool) -> MessageCodec | None:
        found = self.codec.get(arbitration_id, is_extended)
        if found is None and self.j1939 and is_extended:
            found = self.by_pgn.get(int(j1939_pgn(arbitration_id)))
        return found


class ChunkDecoder:
    """Decode chunks with ``codecs``: channel name → database; key ``None`` is the default
    for channels not named (omit it to skip unnamed channels)."""

    def __init__(self, codecs: Mapping[str | None, DatabaseCodec], *, j1939: bool = False) -> None:
        if not codecs:
            raise ValueError("at least one DBC is needed")
        self._codecs = {name: _ChannelCodec(c, j1939=j1939) for name, c in codecs.items()}
        self.counts = DecodeCounts()
        self._reported_errors: set[tuple[str, str]] = set()

    def decode(self, chunk: FrameChunk) -> list[MessageBlock]:
        """Decode one chunk; counters in :attr:`counts` add up over calls."""
        counts = self.counts
        n = len(chunk)
        counts.frames += n
        if n == 0:
            return []
        usable = ~(chunk.is_error | chunk.is_remote)
        counts.skipped += int(n - usable.sum())
        blocks: list[MessageBlock] = []
        rows_all = np.flatnonzero(usable)
        chan_codes = chunk.channel[rows_all]
        for code in np.unique(chan_codes).tolist():
            bus = chunk.channels[code] if chunk.channels else ""
            codec = self._codecs.get(bus) or self._codecs.get(None)
            rows_c = rows_all[chan_codes == code]
            if codec is None:
                counts.skipped += len(rows_c)
                continue
            keys = chunk.arbitration_id[rows_c].astype(np.uint64) | np.where(
                chunk.is_extended[rows_c], _EXT, np.uint64(0)
            )
            # Standard ids fit 16 bits, where numpy's stable sort is a radix sort (about 6x faster).
            order = (
                np.argsort(keys.astype(np.uint16), kind="stable")
                if len(keys) and int(keys.max()) < 0x10000
                else np.argsort(keys, kind="stable")
            )
            sorted_keys = keys[order]
            sorted_rows = rows_c[order]
            # One gather per column in key order; each message's block is then a slice.
            data = chunk.data[sorted_rows]
            dlc = chunk.dlc[sorted_rows]
            t_ns = chunk.t_ns[sorted_rows]
            ids = chunk.arbitration_id[sorted_rows]
            bounds = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
            starts = [0, *bounds.tolist()]
            stops = [*bounds.tolist(), len(sorted_keys)]
            for start, stop in zip(starts, stops, strict=True):
                key = int(sorted_keys[start])
                arbitration_id, is_extended = key & 0xFFFFFFFF, bool(key >> 32)
                message = codec.lookup(arbitration_id, is_extended)
                if message is None:
                    counts.unknown += stop - start
                    counts.unknown_ids.add((bus, key))
                    continue
                rows = sorted_rows[start:stop]
                payloads = data[start:stop]
                b_t_ns = t_ns[start:stop]
                b_ids = ids[start:stop]
                long_enough = dlc[start:stop] >= message.length
                if data.shape[1] < message.length:
                    long_enough[:] = False
                if not long_enough.all():
                    short = int((~long_enough).sum())
                    counts.errors += short
                    self._report_once(bus, message, f"{short} frame(s) shorter than {message.length} bytes")
                    rows, payloads = rows[long_enough], payloads[long_enough]
                    b_t_ns, b_ids = b_t_ns[long_enough], b_ids[long_enough]
                    if len(rows) == 0:
                        continue
                decoded = message.decode_frames(payloads)
                good = len(rows) if decoded.ok.all() else int(decoded.ok.sum())
                counts.decoded += good
                if good < len(rows):
                    counts.errors += len(rows) - good
                    why = message.problem or "multiplexer value without a branch"
                    self._report_once(bus, message, why)
                blocks.append(
                    MessageBlock(
                        bus=bus, codec=message, rows=rows, t_ns=b_t_ns, arbitration_id=b_ids, decoded=decoded
                    )
                )
        return blocks

    def _report_once(self, bus: str, message: MessageCodec, problem: str) -> None:
        key = (bus, message.name)
        if key in self._reported_errors:
            return
        self._reported_errors.add(key)
        log.warning(
            "bus %s message %s (0x%X): frames not decoded: %s", bus, message.name, message.frame_id, problem
        )
