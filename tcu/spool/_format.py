"""On-disk record format of the spool and the segment scanner.

A segment is a plain file of records laid end to end. Each record is a fixed
36-byte little-endian header followed by the stored payload::

    offset size field
         0    4 magic        b"TSPL"
         4    1 version      1
         5    1 flags        FLAG_ZSTD | FLAG_TOMBSTONE | FLAG_REASON_AGE | FLAG_REASON_CORRUPT
                            | FLAG_REASON_UNSPOOLED
         6    1 priority     0..255, higher survives eviction longer
         7    1 reserved     0
         8    8 seq          u64, 1, 2, 3, ... within the spool's boot epoch
        16    8 created_ns   i64, UTC epoch nanoseconds given by the caller
        24    4 stored_len   u32, bytes of payload that follow the header (0 for a tombstone)
        28    4 raw_len      u32, length of the payload before compression
        32    4 crc32        zlib CRC-32 of header bytes 0..31 followed by the stored payload

A record is valid only when the magic, version, lengths and CRC all agree, so a
torn write (power cut in the middle of ``write()``) or flipped bits are caught.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

MAGIC = b"TSPL"
VERSION = 1
HEADER = struct.Struct("<4sBBBBQqIII")
HEADER_LEN = HEADER.size  # 36
_CRC_SPAN = HEADER_LEN - 4

FLAG_ZSTD = 0x01
FLAG_TOMBSTONE = 0x02
FLAG_REASON_AGE = 0x04
FLAG_REASON_CORRUPT = 0x08
# A tombstone written in place of a batch that never reached the disk (the agent dropped it
# from its bounded RAM backlog while the disk was full or unwritable, or it was too large).
FLAG_REASON_UNSPOOLED = 0x10
_KNOWN_FLAGS = FLAG_ZSTD | FLAG_TOMBSTONE | FLAG_REASON_AGE | FLAG_REASON_CORRUPT | FLAG_REASON_UNSPOOLED

MAX_PAYLOAD_LEN = 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class RecordHeader:
    """A decoded, CRC-checked record header and where the record sits in its segment."""

    offset: int
    flags: int
    priority: int
    seq: int
    created_ns: int
    stored_len: int
    raw_len: int

    @property
    def end(self) -> int:
        return self.offset + HEADER_LEN + self.stored_len


def encode(*, flags: int, priority: int, seq: int, created_ns: int, stored: bytes, raw_len: int) -> bytes:
    """Return one complete record (header and stored payload) ready for a single ``write()``."""
    prefix = HEADER.pack(MAGIC, VERSION, flags, priority, 0, seq, created_ns, len(stored), raw_len, 0)
    prefix = prefix[:_CRC_SPAN]
    crc = zlib.crc32(stored, zlib.crc32(prefix))
    return b"".join((prefix, crc.to_bytes(4, "little"), stored))


def parse_at(buf: bytes | memoryview, offset: int) -> RecordHeader | None:
    """Return the record header at ``offset`` when a complete, valid record starts there."""
    n = len(buf)
    if n - offset < HEADER_LEN:
        return None
    magic, version, flags, priority, reserved, seq, created_ns, stored_len, raw_len, crc = HEADER.unpack_from(
        buf, offset
    )
    if magic != MAGIC or version != VERSION or reserved != 0 or flags & ~_KNOWN_FLAGS:
        return None
    end = offset + HEADER_LEN + stored_len
    if end > n:
        return None
    view = memoryview(buf)
    calc = zlib.crc32(view[offset + HEADER_LEN : end], zlib.crc32(view[offset : offset + _CRC_SPAN]))
    if calc != crc:
        return None
    return RecordHeader(offset, flags, priority, seq, created_ns, stored_len, raw_len)


def check_payload(header_bytes: bytes, stored: bytes) -> bool:
    """True when ``stored`` matches the CRC in ``header_bytes`` (re-check on read)."""
    crc = int.from_bytes(header_bytes[_CRC_SPAN:HEADER_LEN], "little")
    return zlib.crc32(stored, zlib.crc32(header_bytes[:_CRC_SPAN])) == crc


def looks_complete(buf: bytes | memoryview, offset: int) -> bool:
    """True when a structurally plausible header at ``offset`` declares a record that fits in ``buf``.

    Used at the tail of the last segment to tell a torn write (the declared record runs past
    the end of the file: it was never completely written) from a complete record whose
    bytes were damaged afterwards (its sequence number may already have been handed out).
    """
    if len(buf) - offset < HEADER_LEN:
        return False
    fields = HEADER.unpack_from(buf, offset)
    magic: bytes = fields[0]
    version: int = fields[1]
    stored_len: int = fields[7]
    return magic == MAGIC and version == VERSION and offset + HEADER_LEN + stored_len <= len(buf)


@dataclass(frozen=True, slots=True)
class BadRegion:
    """Bytes ``start``..``end`` of a segment hold no valid record."""

    start: int
    end: int
    at_tail: bool


def scan(buf: bytes) -> tuple[list[RecordHeader], list[BadRegion]]:
    """Parse every valid record in a segment; resynchronise on the magic after damage."""
    records: list[RecordHeader] = []
    bad: list[BadRegion] = []
    pos = 0
    n = len(buf)
    while pos < n:
        rec = parse_at(buf, pos)
        if rec is not None:
            records.append(rec)
            pos = rec.end
            continue
        nxt = _next_valid(buf, pos + 1)
        if nxt is None:
            bad.append(BadRegion(pos, n, at_tail=True))
            break
        bad.append(BadRegion(pos, nxt, at_tail=False))
        pos = nxt
    return records, bad


def _next_valid(buf: bytes, start: int) -> int | None:
    pos = buf.find(MAGIC, start)
    while pos != -1:
        if parse_at(buf, pos) is not None:
            return pos
        pos = buf.find(MAGIC, pos + 1)
    return None
