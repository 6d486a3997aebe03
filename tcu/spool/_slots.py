"""A tiny crash-safe counter file: two CRC-checked 16-byte slots written alternately.

A torn or lost write damages at most the slot being written; the other still holds the
previous value, and reading takes the highest valid one. Both slots are written when the file
is created, so later writes overwrite allocated blocks and need no new disk space.
OSError goes to the caller.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

_SLOT = struct.Struct("<4sQI")  # magic, value, crc32 of magic+value


class SlotFile:
    """A monotonically growing unsigned value kept in ``path``."""

    def __init__(self, path: Path, magic: bytes) -> None:
        if len(magic) != 4:
            raise ValueError("magic must be 4 bytes")
        self.path = path
        self._magic = magic
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        data = os.pread(self._fd, 2 * _SLOT.size, 0)
        best, best_slot = 0, 1
        for slot in (0, 1):
            chunk = data[slot * _SLOT.size : (slot + 1) * _SLOT.size]
            if len(chunk) < _SLOT.size:
                continue
            found_magic, value, crc = _SLOT.unpack(chunk)
            if found_magic == magic and zlib.crc32(chunk[:12]) == crc and value >= best:
                best, best_slot = value, slot
        self.value = best
        self._next_slot = best_slot ^ 1  # never overwrite the slot holding the current value
        if len(data) < 2 * _SLOT.size:
            # Both slots are written when the file is created, so that its blocks are allocated
            # and a later write (an ack on a full disk) never needs new space.
            for slot in (1, 0):  # slot 1 cannot hold a value yet: it goes first
                self._write_slot(slot, best)
            os.fdatasync(self._fd)
            self._next_slot = 0

    def _write_slot(self, slot: int, value: int) -> None:
        head = self._magic + value.to_bytes(8, "little")
        data = head + zlib.crc32(head).to_bytes(4, "little")
        offset = slot * _SLOT.size
        if os.pwrite(self._fd, data, offset) != len(data):
            raise OSError(f"short write of {len(data)} bytes at offset {offset}")

    def write(self, value: int, *, sync: bool) -> None:
        self._write_slot(self._next_slot, value)
        if sync:
            os.fdatasync(self._fd)
        self._next_slot ^= 1
        self.value = value

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
