"""Read a stopped agent's spool without changing it, and damage it on purpose.

:func:`inspect_spool` reads what a spool directory holds right after its agent
was killed: the boot epoch (``state.json``), the ack watermark (``ack``) and
every valid record of the segments (the checksummed format of
:mod:`tcu.spool._format`); when ``state.json`` does not read, the epoch comes from
the spool's ``epoch`` file. Its ``highest_seq`` is the newest batch the agent had
made durable at the kill: the ground truth of what the ingest must end up
holding, whatever the ingest reports. It opens nothing for writing and takes no
lock, so the next agent finds the directory as the killed one left it.

:func:`corrupt_record` flips bytes in the middle of one unacked record (its
checksum then fails; a mid-file record, not a torn tail) and
:func:`truncate_state` cuts ``state.json`` in half: the spool-damage phase of
the chaos run.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from tcu.spool import _format as fmt

__all__ = ["Damage", "SpoolFacts", "corrupt_record", "inspect_spool", "truncate_state"]

_ACK_MAGIC = b"TACK"
_EPOCH_MAGIC = b"TEPO"
_SLOT_LEN = 16


@dataclass(frozen=True, slots=True)
class SpoolFacts:
    boot_epoch: int | None  # None: state.json missing or unreadable
    acked_seq: int
    highest_seq: int  # max(acked, newest valid record); 0 for a fresh spool
    records: int  # valid records above the ack watermark (tombstones included)
    bytes: int  # bytes of the segment files
    problem: str | None = None  # what could not be read, if anything

    def as_json(self) -> dict[str, object]:
        return {
            "boot_epoch": self.boot_epoch,
            "acked_seq": self.acked_seq,
            "highest_seq": self.highest_seq,
            "records": self.records,
            "bytes": self.bytes,
            "problem": self.problem,
        }

    @classmethod
    def from_json(cls, d: dict[str, object]) -> SpoolFacts:
        epoch = d.get("boot_epoch")
        return cls(
            boot_epoch=None if epoch is None else int(str(epoch)),
            acked_seq=int(str(d["acked_seq"])),
            highest_seq=int(str(d["highest_seq"])),
            records=int(str(d["records"])),
            bytes=int(str(d["bytes"])),
            problem=None if d.get("problem") is None else str(d["problem"]),
        )


@dataclass(frozen=True, slots=True)
class Damage:
    kind: str  # "record" or "state"
    path: str
    offset: int
    seq: int  # the damaged record's seq (0 for state.json)
    detail: str
    at_ns: int  # when (wall clock)


def _segments(directory: Path) -> list[tuple[int, Path]]:
    found: list[tuple[int, Path]] = []
    for path in directory.glob("seg-*.log"):
        digits = path.name[4:-4]
        if digits.isdigit():
            found.append((int(digits), path))
    return sorted(found)


def _read_slots(path: Path, magic: bytes) -> int:
    """The highest valid value of a two-slot counter file (``tcu.spool._slots``); 0 when none."""
    try:
        data = path.read_bytes()
    except OSError:
        return 0
    best = 0
    for slot in (0, 1):
        chunk = data[slot * _SLOT_LEN : (slot + 1) * _SLOT_LEN]
        if (
            len(chunk) == _SLOT_LEN
            and chunk[:4] == magic
            and zlib.crc32(chunk[:12]) == int.from_bytes(chunk[12:16], "little")
        ):
            best = max(best, int.from_bytes(chunk[4:12], "little"))
    return best


def _read_ack(directory: Path) -> int:
    return _read_slots(directory / "ack", _ACK_MAGIC)


def _read_epoch(directory: Path) -> tuple[int | None, str | None]:
    path = directory / "state.json"
    try:
        return int(json.loads(path.read_text())["boot_epoch"]), None
    except FileNotFoundError:
        problem = f"{path}: missing"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = f"{path}: unreadable ({exc!r})"
    # the spool keeps the epoch in its own file too (from which it rebuilds state.json)
    epoch = _read_slots(directory / "epoch", _EPOCH_MAGIC)
    return (epoch or None), problem


def inspect_spool(directory: Path) -> SpoolFacts:
    """What a stopped agent's spool holds (read-only)."""
    epoch, problem = _read_epoch(directory)
    acked = _read_ack(directory)
    highest, records, size = acked, 0, 0
    for _, path in _segments(directory):
        try:
            buf = path.read_bytes()
        except OSError as exc:
            problem = f"{path}: cannot read ({exc.strerror})"
            continue
        size += len(buf)
        for rec in fmt.scan(buf)[0]:
            if rec.seq > acked:
                records += 1
                highest = max(highest, rec.seq)
    return SpoolFacts(epoch, acked, highest, records, size, problem)


def corrupt_record(directory: Path, *, spare_newest: int = 2) -> Damage | None:
    """Flip bytes inside the payload of an unacked record two thirds into the backlog, sparing the newest.

    Returns None when fewer than ``spare_newest + 1`` unacked payload records are on disk.
    """
    acked = _read_ack(directory)
    candidates: list[tuple[Path, fmt.RecordHeader]] = []
    for _, path in _segments(directory):
        buf = path.read_bytes()
        candidates += [
            (path, rec)
            for rec in fmt.scan(buf)[0]
            if rec.seq > acked and rec.stored_len > 0 and not rec.flags & fmt.FLAG_TOMBSTONE
        ]
    candidates.sort(key=lambda c: c[1].seq)
    if len(candidates) <= spare_newest:
        return None
    usable = candidates[: len(candidates) - spare_newest]
    # late in the backlog: the oldest unacked records may be stored at the ingest already
    path, rec = usable[(2 * len(usable)) // 3]
    at = rec.offset + fmt.HEADER_LEN + rec.stored_len // 2
    with path.open("r+b") as fh:
        fh.seek(at)
        old = fh.read(4)
        fh.seek(at)
        fh.write(bytes(b ^ 0xFF for b in old))
    detail = f"flipped {len(old)} bytes of record seq {rec.seq}"
    return Damage("record", str(path), at, rec.seq, detail, time.time_ns())


def truncate_state(directory: Path) -> Damage:
    """Cut ``state.json`` to half its length (a torn rewrite)."""
    path = directory / "state.json"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    detail = f"truncated {len(data)} to {len(data) // 2} bytes"
    return Damage("state", str(path), len(data) // 2, 0, detail, time.time_ns())
