"""The durable on-disk spool of encoded telemetry batches.

Layout of a spool directory::

    LOCK                       flock-ed while a Spool has the directory open (holds its pid)
    state.json                 boot epoch, eviction and corruption counters, eviction intent
                               (replaced atomically: write tmp, fsync, rename, fsync directory)
    ack                        two 16-byte slots holding the ack watermark (CRC-checked, written
                               alternately so a torn write leaves the other slot intact; both
                               written at creation, so an ack never needs new disk space)
    reserved                   the same for the highest seq that may have been handed out
                               ("crash" mode only, advanced 256 seqs at a time, fdatasync-ed)
    epoch                      the same for the boot epoch, so that a lost or truncated
                               state.json is rebuilt (epoch from here, ack watermark from ack,
                               next seq from the segments) instead of stranding the batches
    headroom                   segment_bytes + 64 KiB of allocated space while the Spool is
                               open; released when the disk is full so that eviction can work
    seg-<first seq>.log        segments of records (see :mod:`tcu.spool._format`)
    damaged-<ns>/              only after ``on_damage = "start-fresh"``: the files of a spool
                               whose state could not be rebuilt, kept for inspection

Full disk: when a write fails with ENOSPC or EDQUOT, the spool releases its headroom, evicts
by the usual policy (lowest priority, oldest first; evicted records become tombstones) down to
90 % of what the segments held and at least the record plus a new headroom below it,
reserves the headroom again and retries the write once; only then does it raise
:class:`SpoolFullError`.

Identity: the spool chooses ``boot_epoch`` (``time.time_ns()``) when it creates a directory
and keeps it for the life of that directory, so records that were not acknowledged before a
restart are sent again under the same ``(boot_epoch, seq)`` and the ingest can drop the
duplicates. ``seq`` runs 1, 2, 3, ... without gaps.

Eviction keeps seqs gapless: an evicted record is rewritten as a *tombstone* that keeps its
seq, priority, ``created_ns`` and original length but drops the payload. :meth:`Spool.pending`
yields tombstones in seq order like any other record (``record.tombstone`` names why:
``"evicted"``, ``"expired"`` or ``"corrupt"``), the agent uploads each as an empty batch that
carries the eviction note, the ingest acks it, and its contiguous watermark keeps moving.
The per-priority counts are also kept in ``state.json`` for :meth:`Spool.take_eviction_report`.

Seqs are never handed out twice, even across a power cut in ``"crash"`` mode: if the previous
session did not :meth:`Spool.close` and the kernel boot id changed since (a power cut or
kernel crash, not a ``kill -9``), every seq up to the durable reservation that has no record
on disk becomes a ``"corrupt"`` tombstone, and new batches continue above it. Otherwise the
ingest, which deduplicates by ``(boot_epoch, seq)``, would drop new batches that reuse seqs
of batches it already stored. For the same reason a record cut short at the end of the last
segment is cut off and its seq reused only when the previous session ended without
:meth:`Spool.close` (the append it belonged to never returned); after a clean close the bytes
were lost later and its seq becomes a ``"corrupt"`` tombstone.

Agents that need the seq inside the encoded batch can append the identity at send time:
protobuf merges concatenated messages, so ``payload + TelemetryBatch(boot_epoch=e,
seq=s).SerializeToString()`` parses as the batch with those two fields set.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import zstandard

from tcu.errors import ClosedResourceError, SpoolError
from tcu.fsutil import fsync_directory, write_atomic
from tcu.spool import _format as fmt
from tcu.spool._slots import SlotFile
from tcu.spool.config import SpoolConfig
from tcu.spool.errors import (
    SpoolCorruptError,
    SpoolFullError,
    SpoolLockedError,
    SpoolTooLargeError,
    SpoolUnavailableError,
    SpoolUsageError,
)

__all__ = ["EvictionReport", "Spool", "SpoolRecord", "SpoolStats", "TombstoneReason"]

logger = logging.getLogger(__name__)

TombstoneReason = Literal["evicted", "expired", "corrupt", "unspooled"]

_STATE_FORMAT = 1
_STATE_NAME = "state.json"
_ACK_NAME = "ack"
_LOCK_NAME = "LOCK"
_SEG_PREFIX = "seg-"
_SEG_SUFFIX = ".log"
_RESERVE_NAME = "reserved"
_EPOCH_NAME = "epoch"  # the boot epoch again, CRC-checked: state.json can be rebuilt without it
_DAMAGED_PREFIX = "damaged-"
_REFUSE_ADVICE = (
    '; the spool is left as it is ([spool] on_damage = "start-fresh" moves it aside, starts a '
    "new spool and reports its batches as lost)"
)
_BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
# In "crash" mode the highest seq that may have been handed out is kept (fdatasync-ed) in the
# "reserved" file, one block at a time, so a power cut can never make a seq be used twice.
_SEQ_RESERVE_BLOCK = 256
# A burst of eviction frees space down to this fraction of max_bytes, so that a full spool
# rewrites segments once per burst and not on every append.
_EVICT_TO_FRACTION = 0.9
_AGE_CHECK_PERIOD_NS = 1_000_000_000
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})  # eviction can make room for these
# The "headroom" file holds segment_bytes plus this much disk space while the spool is open. On
# a full disk it is released first, so that eviction (state write-ahead, segment rewrites)
# always has room to work with.
_HEADROOM_NAME = "headroom"
_HEADROOM_EXTRA = 64 * 1024
_MAX_I64 = 2**63 - 1


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One record of the spool: a batch payload, or a tombstone standing in for a lost one.

    ``payload`` is the caller's bytes (decompressed); it is ``b""`` for a tombstone.
    ``original_len`` is the payload length as appended (kept in tombstones too).
    ``priority`` and ``created_ns`` are 0 for a ``"corrupt"`` tombstone whose header was lost
    too. ``detail`` says, for a ``"corrupt"`` tombstone found by this process, where and how
    (file and offset); it is not kept across a restart.
    """

    seq: int
    priority: int
    created_ns: int
    payload: bytes
    original_len: int
    tombstone: TombstoneReason | None = None
    detail: str = ""

    @property
    def is_tombstone(self) -> bool:
        return self.tombstone is not None


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """Counts describing the spool at one moment."""

    boot_epoch: int
    next_seq: int
    acked_seq: int
    records: int
    """Unacknowledged records that still carry their payload."""
    tombstones: int
    """Unacknowledged tombstones (evicted, expired or lost to corruption)."""
    bytes: int
    """Bytes of all segment files on disk."""
    segments: int
    evicted_by_priority: Mapping[int, int]
    """Records evicted (by bytes or age) since the directory was created, per priority."""
    expired: int
    """How many of the evicted records went because of ``max_age_s``."""
    repaired_regions: int
    """Torn tails truncated plus corrupt regions skipped, since the directory was created."""
    lost_to_corruption: int
    """Records whose bytes were destroyed (now ``"corrupt"`` tombstones)."""
    oldest_age_s: float | None
    """Age of the oldest unacknowledged payload record, ``None`` when there is none."""
    disk_full: int = 0
    """Writes the disk refused (ENOSPC, EDQUOT) since this open, each answered by eviction."""
    headroom_bytes: int = 0
    """Disk space the headroom file holds now (0 while it could not be reserved)."""
    unspooled: int = 0
    """``"unspooled"`` tombstones written since this open (batches that never reached the disk)."""


@dataclass(frozen=True, slots=True)
class EvictionReport:
    """Losses since the previous :meth:`Spool.take_eviction_report`, for upstream telemetry."""

    evicted_by_priority: Mapping[int, int] = field(default_factory=dict)
    expired: int = 0
    lost_to_corruption: int = 0

    @property
    def total(self) -> int:
        return sum(self.evicted_by_priority.values()) + self.lost_to_corruption


class _Segment:
    __slots__ = ("hi", "lo", "name_seq", "path", "read_fd", "size", "write_fd")

    def __init__(self, path: Path, name_seq: int) -> None:
        self.path = path
        self.name_seq = name_seq
        self.size = 0
        self.lo = name_seq  # seqs lo..hi (inclusive) of this segment are in the index
        self.hi = name_seq - 1
        self.read_fd = -1
        self.write_fd = -1


class _Entry:
    __slots__ = ("created_ns", "flags", "offset", "priority", "raw_len", "seg", "stored_len")

    def __init__(
        self,
        seg: _Segment,
        offset: int,
        *,
        flags: int,
        priority: int,
        created_ns: int,
        stored_len: int,
        raw_len: int,
    ) -> None:
        self.seg = seg
        self.offset = offset  # -1: a corrupt-gap tombstone not yet written to disk
        self.flags = flags
        self.priority = priority
        self.created_ns = created_ns
        self.stored_len = stored_len
        self.raw_len = raw_len

    @property
    def is_tombstone(self) -> bool:
        return bool(self.flags & fmt.FLAG_TOMBSTONE)


def _reason(flags: int) -> TombstoneReason | None:
    if not flags & fmt.FLAG_TOMBSTONE:
        return None
    if flags & fmt.FLAG_REASON_CORRUPT:
        return "corrupt"
    if flags & fmt.FLAG_REASON_UNSPOOLED:
        return "unspooled"
    if flags & fmt.FLAG_REASON_AGE:
        return "expired"
    return "evicted"


def _read_boot_id() -> str | None:
    """The kernel's boot id (changes on every boot), ``None`` where it cannot be read."""
    try:
        return _BOOT_ID_PATH.read_text(encoding="ascii").strip() or None
    except OSError:
        return None


def _seg_name(first_seq: int) -> str:
    return f"{_SEG_PREFIX}{first_seq:020d}{_SEG_SUFFIX}"


class Spool:
    """A durable, bounded, crash-safe queue of opaque batch payloads with gapless seqs.

    Open with :meth:`open`; :meth:`close` is idempotent (also a context manager).

    Thread-safety: every public method takes one internal lock, so a Spool may be shared by
    threads (e.g. called through ``asyncio.to_thread``). :meth:`pending` takes the lock for
    each record it reads, not for the whole iteration, so appends and acks can interleave.
    One directory is held by one Spool at a time (an ``flock`` on ``LOCK``; a second open,
    in this or another process, raises :class:`SpoolLockedError`).

    Bounds: when the segment files exceed ``max_bytes`` after an append, unacknowledged
    records are evicted, lowest priority first and oldest (lowest seq) first within a
    priority, until the files are at or below 90 % of ``max_bytes`` (one burst, one warning).
    Records whose ``created_ns`` is older than ``max_age_s`` are evicted too (checked at most
    once a second on append, and on :meth:`enforce_bounds`). Evicted records become
    tombstones; see the module docstring.
    """

    def __init__(self, config: SpoolConfig, clock_ns: Callable[[], int], lock_fd: int) -> None:
        # Use Spool.open(); this only sets fields.
        self._config = config
        self._dir = config.directory
        self._clock_ns = clock_ns
        self._lock_fd = lock_fd
        self._mutex = threading.Lock()
        self._closed = False
        self._power_loss = config.durability == "power-loss"
        self._segments: list[_Segment] = []
        self._index: dict[int, _Entry] = {}
        self._acked = 0
        self._next_seq = 1
        self._total_bytes = 0
        self._ack_file: SlotFile | None = None
        self._reserve_file: SlotFile | None = None
        self._epoch_file: SlotFile | None = None
        self._reserved = 0
        self._prev_session: dict[str, Any] = {}
        self._kernel_boot_id = _read_boot_id()
        self._boot_epoch = 0
        self._evicted: dict[int, int] = {}
        self._evicted_reported: dict[int, int] = {}
        self._expired = 0
        self._expired_reported = 0
        self._repairs = 0
        self._lost = 0
        self._lost_reported = 0
        self._headroom_fd = -1
        self._headroom = 0
        self._headroom_errno: int | None = None
        self._disk_full = 0
        self._full_logged = False
        self._unspooled = 0
        self._details: dict[int, str] = {}  # seq -> where a "corrupt" tombstone's record was lost
        self._intent: dict[int, int] = {}
        self._next_age_check_ns = 0
        self._compressor = (
            zstandard.ZstdCompressor(level=config.zstd_level, write_content_size=True)
            if config.compression == "zstd"
            else None
        )
        self._decompressor = zstandard.ZstdDecompressor()

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, config: SpoolConfig, *, clock_ns: Callable[[], int] = time.time_ns) -> Spool:
        """Open (creating if needed) the spool in ``config.directory`` and recover its contents.

        Recovery cuts off a torn tail of the last segment and skips corrupt regions (the seqs
        of the records they held become ``"corrupt"`` tombstones and are never reused; so does
        the torn one, unless the previous session ended while appending it), finishes an
        eviction interrupted by a crash, and deletes fully acknowledged segments. Raises
        :class:`SpoolUnavailableError` naming the path when the directory cannot be created or
        written, :class:`SpoolLockedError` when another Spool holds it.
        """
        directory = config.directory
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolUnavailableError(
                f"{directory}: cannot create spool directory: {exc.strerror or exc}"
            ) from exc
        lock_path = directory / _LOCK_NAME
        try:
            lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise SpoolUnavailableError(
                f"{lock_path}: cannot open spool lock file for writing: {exc.strerror or exc}"
            ) from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            try:
                holder = os.pread(lock_fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            except OSError:
                holder = "unknown"
            finally:
                os.close(lock_fd)
            raise SpoolLockedError(
                f"{lock_path}: the spool is locked by another process (pid {holder}): is another "
                f"agent running on {directory}?"
            ) from exc
        with contextlib.suppress(OSError):  # who holds it, for the message above (best effort)
            os.ftruncate(lock_fd, 0)
            os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
        spool = cls(config, clock_ns, lock_fd)
        try:
            try:
                spool._open_headroom()
                spool._recover()
            except SpoolCorruptError as exc:
                if config.on_damage != "start-fresh":
                    raise
                spool = spool._start_fresh(exc)
            if not spool._reserve_headroom() and spool._headroom_errno in _DISK_FULL_ERRNOS:
                spool._make_room(0, "no room for the headroom")
        except BaseException:
            spool._close_fds()
            raise
        return spool

    def _start_fresh(self, damage: SpoolCorruptError) -> Spool:
        """``on_damage = "start-fresh"``: move the spool's files into ``damaged-<ns>/``, open a
        new spool (new boot epoch) under the same lock, and write a ``"corrupt"`` tombstone
        for every unacknowledged record found in the old segments, so that the ingest counts
        each lost batch."""
        problem = str(damage).removesuffix(_REFUSE_ADVICE)
        lost: list[fmt.RecordHeader] = []
        for _name_seq, path in self._list_segments():
            with contextlib.suppress(OSError):
                records, _bad = fmt.scan(path.read_bytes())
                lost.extend(rec for rec in records if rec.seq > self._acked)
        lost.sort(key=lambda rec: rec.seq)
        aside = self._dir / f"{_DAMAGED_PREFIX}{time.time_ns()}"
        keep = {_LOCK_NAME, _HEADROOM_NAME, "catalogs"}
        try:
            aside.mkdir()
            for entry in self._dir.iterdir():
                if entry.name not in keep and not entry.name.startswith(_DAMAGED_PREFIX):
                    entry.rename(aside / entry.name)
        except OSError as exc:
            raise self._os_error(aside, "cannot move the damaged spool aside", exc) from exc
        logger.error(
            "spool %s: %s; on_damage = start-fresh: its files were moved to %s and a new spool "
            "starts; %d unacknowledged batches are reported upstream as lost",
            self._dir,
            problem,
            aside,
            len(lost),
        )
        self._close_fds(keep_lock=True)
        fresh = Spool(self._config, self._clock_ns, self._lock_fd)
        self._lock_fd = -1
        try:
            fresh._open_headroom()
            fresh._recover()
            fresh._report_moved(lost, problem, aside)
        except BaseException:
            fresh._close_fds()
            raise
        return fresh

    def _report_moved(self, lost: list[fmt.RecordHeader], problem: str, aside: Path) -> None:
        flags = fmt.FLAG_TOMBSTONE | fmt.FLAG_REASON_CORRUPT
        fresh = self
        for rec in lost:
            seq = fresh._next_seq
            prio, created, raw_len = rec.priority, rec.created_ns, rec.raw_len
            data = fmt.encode(
                flags=flags, priority=prio, seq=seq, created_ns=created, stored=b"", raw_len=raw_len
            )
            fresh._store(seq, data, flags=flags, priority=prio, created_ns=created, raw_len=raw_len)
            fresh._details[seq] = f"batch {rec.seq} of a damaged spool ({problem}); moved to {aside}"
        fresh._lost += len(lost)
        fresh._write_state()

    def _recover(self) -> None:
        for stray in self._dir.glob("*.tmp"):
            stray.unlink(missing_ok=True)
        seg_paths = self._list_segments()
        self._open_slot_files()
        self._load_state(have_segments=bool(seg_paths))
        if seg_paths and seg_paths[0][0] - 1 > self._acked:
            # Segments are deleted only after their ack was written; a lower ack slot means
            # the ack write did not survive (crash mode, power cut). Trust the segment name.
            self._write_ack(seg_paths[0][0] - 1, sync=True)
        expected = self._acked + 1
        dirty: set[int] = set()
        for i, (name_seq, path) in enumerate(seg_paths):
            seg = _Segment(path, name_seq)
            seg.lo = expected
            is_last = i == len(seg_paths) - 1
            try:
                buf = path.read_bytes()
            except OSError as exc:
                raise SpoolUnavailableError(f"{path}: cannot read segment: {exc.strerror}") from exc
            seg.size = len(buf)
            records, bad = fmt.scan(buf)
            lost_tail_record = False
            for region in bad:
                self._repairs += 1
                if region.at_tail and is_last and not fmt.looks_complete(buf, region.start):
                    # A record cut short. After an unclean end (kill -9 or power cut while
                    # appending) it is the append that never returned, so its seq was never
                    # handed out (power-loss mode returns only after fdatasync; in crash mode a
                    # power cut makes every reserved seq a tombstone below). Otherwise (the
                    # previous session closed cleanly) bytes were lost later: the seq may have
                    # gone upstream, so it is never reused but becomes a "corrupt" tombstone.
                    # Either way the segment is rewritten without the torn bytes.
                    handed_out = bool(self._prev_session.get("clean", True))
                    logger.warning(
                        "spool %s: torn record at offset %d (%d bytes to end of file); %s",
                        path,
                        region.start,
                        region.end - region.start,
                        "its seq becomes a 'corrupt' tombstone"
                        if handed_out
                        else "cut off (the append it belonged to never returned)",
                    )
                    dirty.add(i)
                    lost_tail_record = lost_tail_record or handed_out
                else:
                    logger.warning(
                        "spool %s: corrupt bytes at offset %d..%d (%d bytes) skipped",
                        path,
                        region.start,
                        region.end,
                        region.end - region.start,
                    )
                    dirty.add(i)
                    if region.at_tail and is_last:
                        lost_tail_record = True
            self._segments.append(seg)
            for rec in records:
                if rec.seq <= self._acked:
                    continue
                if rec.seq < expected:
                    logger.warning(
                        "spool %s: record seq %d at offset %d repeats an earlier seq; dropped",
                        path,
                        rec.seq,
                        rec.offset,
                    )
                    dirty.add(i)
                    continue
                if rec.seq > expected:
                    # Seqs expected..rec.seq-1 were destroyed. At a segment boundary they belong
                    # to the end of the previous segment (segment names stay <= their records).
                    owner = i - 1 if expected == seg.lo and i > 0 else i
                    self._add_lost(self._segments[owner], expected, rec.seq - 1, path)
                    dirty.add(owner)
                    if owner != i:
                        seg.lo = rec.seq
                    expected = rec.seq
                self._index[rec.seq] = _Entry(
                    seg,
                    rec.offset,
                    flags=rec.flags,
                    priority=rec.priority,
                    created_ns=rec.created_ns,
                    stored_len=rec.stored_len,
                    raw_len=rec.raw_len,
                )
                seg.hi = rec.seq
                expected = rec.seq + 1
            if lost_tail_record:
                # A complete record at the very end was damaged after it was written: its seq
                # may have been handed out, so it must not be reused.
                self._add_lost(seg, expected, expected, path)
                expected += 1
        if self._power_cut_suspected() and self._reserved >= expected:
            if not self._segments:
                path = self._dir / _seg_name(expected)
                self._replace_file(path, b"")
                self._segments.append(_Segment(path, expected))
            last = self._segments[-1]
            logger.warning(
                "spool %s: the last 'crash' mode session ended without close() before a reboot; "
                "seqs up to %d may have been handed out but their records are not on disk",
                self._dir,
                self._reserved,
            )
            self._add_lost(last, expected, self._reserved, last.path)
            dirty.add(len(self._segments) - 1)
            expected = self._reserved + 1
        self._next_seq = expected
        for seg in self._segments:
            self._total_bytes += seg.size
            seg.read_fd = self._open_read(seg.path)
        if dirty:
            self._sync_ack()
            for i in sorted(dirty):
                self._rewrite(self._segments[i], {})
            self._write_state()
        if self._intent:
            self._apply_intent()
        self._drop_acked_segments()
        self._write_state()  # marks this session as open (not cleanly closed)

    def _power_cut_suspected(self) -> bool:
        prev = self._prev_session
        if prev.get("durability") != "crash" or prev.get("clean", True):
            return False
        # Unknown boot ids count as a reboot: better a few "corrupt" tombstones than a seq
        # used twice (the ingest would drop the second batch as a duplicate).
        return self._kernel_boot_id is None or prev.get("kernel_boot_id") != self._kernel_boot_id

    def _add_lost(self, seg: _Segment, first: int, last: int, path: Path) -> None:
        logger.warning("spool %s: records seq %d..%d were lost to corruption", path, first, last)
        for seq in range(first, last + 1):
            self._index[seq] = _Entry(
                seg,
                -1,
                flags=fmt.FLAG_TOMBSTONE | fmt.FLAG_REASON_CORRUPT,
                priority=0,
                created_ns=0,
                stored_len=0,
                raw_len=0,
            )
        seg.hi = max(seg.hi, last)
        self._lost += last - first + 1

    def _list_segments(self) -> list[tuple[int, Path]]:
        found: list[tuple[int, Path]] = []
        for path in self._dir.glob(f"{_SEG_PREFIX}*{_SEG_SUFFIX}"):
            digits = path.name[len(_SEG_PREFIX) : -len(_SEG_SUFFIX)]
            if digits.isdigit():
                found.append((int(digits), path))
        found.sort()
        return found

    def _load_state(self, *, have_segments: bool) -> None:
        path = self._dir / _STATE_NAME
        assert self._epoch_file is not None
        saved_epoch = self._epoch_file.value
        problem = ""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            problem = "state file is missing"
        except OSError as exc:
            raise SpoolUnavailableError(f"{path}: cannot read state file: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            problem = f"unreadable state file: {exc}"
        if not problem:
            try:
                state: dict[str, Any] = json.loads(text)
                if not isinstance(state, dict):
                    raise TypeError(f"expected an object, got {type(state).__name__}")
                if "format" in state and state["format"] != _STATE_FORMAT:
                    raise SpoolCorruptError(
                        f"{path}: format: expected {_STATE_FORMAT}, got {state['format']!r}"
                    )
                boot_epoch = int(state["boot_epoch"])
                evicted = {int(k): int(v) for k, v in state["evicted"].items()}
                evicted_reported = {int(k): int(v) for k, v in state["evicted_reported"].items()}
                expired = int(state["expired"])
                expired_reported = int(state["expired_reported"])
                repairs = int(state["repaired_regions"])
                lost = int(state["lost_to_corruption"])
                lost_reported = int(state["lost_reported"])
                intent = {int(seq): int(flags) for seq, flags in state["eviction_intent"]}
                prev_session = dict(state["session"])
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                problem = f"unreadable state file: {exc!r}"
            else:
                self._boot_epoch = boot_epoch
                self._evicted, self._evicted_reported = evicted, evicted_reported
                self._expired, self._expired_reported = expired, expired_reported
                self._repairs, self._lost, self._lost_reported = repairs, lost, lost_reported
                self._intent, self._prev_session = intent, prev_session
                if saved_epoch == 0:  # a spool made before the epoch file existed
                    self._write_epoch()
                elif saved_epoch != boot_epoch:
                    logger.error(
                        "spool %s: %s says boot epoch %d, %s says %d; using %s",
                        self._dir,
                        path.name,
                        boot_epoch,
                        _EPOCH_NAME,
                        saved_epoch,
                        path.name,
                    )
                return
        if not have_segments and saved_epoch == 0:
            if problem != "state file is missing":
                logger.warning("spool %s: %s; it held no batches: starting a new spool", path, problem)
            self._boot_epoch = time.time_ns()
            self._write_state()
            self._write_epoch()
            logger.info("spool %s: created with boot_epoch %d", self._dir, self._boot_epoch)
            return
        if saved_epoch == 0:
            raise SpoolCorruptError(
                f"{path}: {problem} and {self._dir / _EPOCH_NAME} holds no boot epoch, so the spooled "
                f"batches cannot be sent under their identity{_REFUSE_ADVICE}"
            )
        # Rebuilt: the epoch from its own file, the ack watermark from the ack file (if that is
        # lost too, from the first segment's name, never above the true one: a resend is
        # deduplicated by the ingest), the next seq from the segments. The eviction counts
        # restart at 0 (they were reported or are lost with the file); an interrupted eviction
        # is not finished (its victims are sent).
        self._boot_epoch = saved_epoch
        self._prev_session = {}
        logger.warning(
            "spool %s: %s; rebuilt from the segments, %s and %s (boot epoch %d, ack watermark %d)",
            path,
            problem,
            _EPOCH_NAME,
            _ACK_NAME,
            saved_epoch,
            self._acked,
        )

    def _write_epoch(self) -> None:
        assert self._epoch_file is not None
        try:
            self._epoch_file.write(self._boot_epoch, sync=True)
        except OSError as exc:
            raise self._os_error(self._epoch_file.path, "cannot write the boot epoch", exc) from exc

    def _write_state(self) -> None:
        state = {
            "format": _STATE_FORMAT,
            "boot_epoch": self._boot_epoch,
            "evicted": {str(k): v for k, v in sorted(self._evicted.items())},
            "evicted_reported": {str(k): v for k, v in sorted(self._evicted_reported.items())},
            "expired": self._expired,
            "expired_reported": self._expired_reported,
            "repaired_regions": self._repairs,
            "lost_to_corruption": self._lost,
            "lost_reported": self._lost_reported,
            "eviction_intent": sorted(self._intent.items()),
            # Who has the directory open now: lets the next open tell a kill -9 (same kernel
            # boot) from a power cut (new boot) after an unclean end of a "crash" mode session.
            "session": {
                "durability": self._config.durability,
                "kernel_boot_id": self._kernel_boot_id,
                "clean": self._closed,
            },
        }
        data = json.dumps(state, separators=(",", ":")).encode()
        self._replace_file(self._dir / _STATE_NAME, data)

    def _replace_file(self, path: Path, data: bytes) -> None:
        """Atomically replace ``path`` with ``data`` (always synced: used for rare writes)."""
        try:
            write_atomic(path, data)
        except OSError as exc:
            raise self._os_error(path, "cannot write", exc) from exc

    # ------------------------------------------------------------------ ack file

    def _open_slot_files(self) -> None:
        for name, magic in ((_ACK_NAME, b"TACK"), (_RESERVE_NAME, b"TRSV"), (_EPOCH_NAME, b"TEPO")):
            path = self._dir / name
            try:
                slot_file = SlotFile(path, magic)
            except OSError as exc:
                raise self._os_error(path, "cannot open", exc) from exc
            if name == _ACK_NAME:
                self._ack_file = slot_file
            elif name == _RESERVE_NAME:
                self._reserve_file = slot_file
            else:
                self._epoch_file = slot_file
        assert self._ack_file is not None and self._reserve_file is not None
        self._acked = self._ack_file.value
        self._reserved = self._reserve_file.value

    def _write_ack(self, seq: int, *, sync: bool) -> None:
        assert self._ack_file is not None
        try:
            self._ack_file.write(seq, sync=sync)
        except OSError as exc:
            raise self._os_error(self._ack_file.path, "cannot write ack watermark", exc) from exc
        self._acked = seq

    def _sync_ack(self) -> None:
        assert self._ack_file is not None
        try:
            self._ack_file.sync()
        except OSError as exc:
            raise self._os_error(self._ack_file.path, "cannot sync ack watermark", exc) from exc

    def _reserve(self, seq: int) -> None:
        """Make sure ``seq`` is below the durable reservation before it is handed out."""
        if seq <= self._reserved:
            return
        assert self._reserve_file is not None
        value = seq + _SEQ_RESERVE_BLOCK - 1
        try:
            self._reserve_file.write(value, sync=True)
        except OSError as exc:
            raise self._os_error(self._reserve_file.path, f"cannot reserve seqs up to {value}", exc) from exc
        self._reserved = value

    # ------------------------------------------------------------------ public API

    @property
    def boot_epoch(self) -> int:
        """The epoch chosen when this directory was created; pairs with ``seq`` as batch id."""
        return self._boot_epoch

    @property
    def config(self) -> SpoolConfig:
        return self._config

    def append(self, payload: bytes, *, priority: int, created_ns: int) -> SpoolRecord:
        """Store ``payload`` durably (per ``config.durability``) and return it with its new seq.

        ``priority`` is 0..255 (higher survives eviction longer); ``created_ns`` is the batch's
        creation time in UTC epoch ns (used by the age bound). The returned record is a
        tombstone when the bounds evicted it at once (every other record outranks it).
        When the disk is full (ENOSPC, EDQUOT) the spool releases its headroom file, evicts by
        priority to make room and tries once more. Raises :class:`SpoolFullError` when the
        disk still refuses the write, :class:`SpoolTooLargeError` when the record alone exceeds
        ``max_bytes`` (either way nothing is stored, the seq is not used, the spool stays
        usable), :class:`SpoolUsageError` for a bad argument.
        """
        if not 0 <= priority <= 255:
            raise SpoolUsageError(f"priority must be 0..255, got {priority}")
        if not 0 <= created_ns <= _MAX_I64:
            raise SpoolUsageError(f"created_ns must be a non-negative int64, got {created_ns}")
        raw_len = len(payload)
        if raw_len > fmt.MAX_PAYLOAD_LEN:
            raise SpoolUsageError(f"payload of {raw_len} bytes is larger than 4 GiB")
        with self._mutex:
            self._check_open()
            raw = stored = bytes(payload)
            flags = 0
            if self._compressor is not None:
                packed = self._compressor.compress(stored)
                if len(packed) < raw_len:
                    stored, flags = packed, fmt.FLAG_ZSTD
            seq = self._next_seq
            rec_len = fmt.HEADER_LEN + len(stored)
            if rec_len > self._config.max_bytes:
                raise SpoolTooLargeError(
                    f"{self._dir}: record seq {seq} of {rec_len} bytes exceeds max_bytes "
                    f"{self._config.max_bytes}"
                )
            data = fmt.encode(
                flags=flags, priority=priority, seq=seq, created_ns=created_ns, stored=stored, raw_len=raw_len
            )
            entry = self._store(
                seq, data, flags=flags, priority=priority, created_ns=created_ns, raw_len=raw_len
            )
            try:
                self._enforce_locked(force_age=False)
            except SpoolError as exc:
                # The record itself is stored; raising would make the caller append it again.
                # The eviction intent stays and is retried on the next append or open.
                logger.error(
                    "spool %s: stored seq %d but could not apply the bounds: %s", self._dir, seq, exc
                )
            if entry.is_tombstone:
                return SpoolRecord(seq, priority, created_ns, b"", raw_len, _reason(entry.flags))
            return SpoolRecord(seq, priority, created_ns, raw, raw_len, None)

    def append_tombstone(self, *, priority: int, created_ns: int, original_len: int) -> SpoolRecord:
        """Store a ``"unspooled"`` tombstone (36 bytes) in place of a batch that never reached
        the disk, so that it gets a seq and its loss is reported like an eviction.

        Raises like :meth:`append` (after trying to make room in the same way).
        """
        if not 0 <= priority <= 255:
            raise SpoolUsageError(f"priority must be 0..255, got {priority}")
        if not 0 <= created_ns <= _MAX_I64:
            raise SpoolUsageError(f"created_ns must be a non-negative int64, got {created_ns}")
        raw_len = max(0, min(original_len, fmt.MAX_PAYLOAD_LEN))
        flags = fmt.FLAG_TOMBSTONE | fmt.FLAG_REASON_UNSPOOLED
        with self._mutex:
            self._check_open()
            seq = self._next_seq
            data = fmt.encode(
                flags=flags, priority=priority, seq=seq, created_ns=created_ns, stored=b"", raw_len=raw_len
            )
            self._store(seq, data, flags=flags, priority=priority, created_ns=created_ns, raw_len=raw_len)
            self._unspooled += 1
            return SpoolRecord(seq, priority, created_ns, b"", raw_len, "unspooled")

    def _store(
        self, seq: int, data: bytes, *, flags: int, priority: int, created_ns: int, raw_len: int
    ) -> _Entry:
        """Write one encoded record as ``seq`` and index it. On a full disk (ENOSPC, EDQUOT) the
        headroom is released and records are evicted by priority (see :meth:`_make_room`), then
        the write is tried once more; :class:`SpoolFullError` when it still does not fit."""
        if not self._power_loss:
            self._reserve(seq)
        try:
            seg, offset = self._write_record(seq, data)
        except SpoolFullError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, OSError) and cause.errno in _DISK_FULL_ERRNOS):
                raise
            if not self._make_room(len(data), str(exc)):
                raise
            seg, offset = self._write_record(seq, data)
        entry = _Entry(
            seg,
            offset,
            flags=flags,
            priority=priority,
            created_ns=created_ns,
            stored_len=len(data) - fmt.HEADER_LEN,
            raw_len=raw_len,
        )
        self._index[seq] = entry
        seg.hi = seq
        seg.size += len(data)
        self._total_bytes += len(data)
        self._next_seq = seq + 1
        self._full_logged = False
        return entry

    def _write_record(self, seq: int, data: bytes) -> tuple[_Segment, int]:
        seg = self._active_segment(len(data))
        offset = seg.size
        try:
            self._pwrite_all(seg.write_fd, data, offset)
            if self._power_loss:
                os.fdatasync(seg.write_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(seg.write_fd, offset)
            what = f"cannot append record seq {seq} ({len(data)} bytes)"
            raise self._os_error(seg.path, what, exc) from exc
        return seg, offset

    def _make_room(self, need: int, problem: str) -> bool:
        """The disk refused a write: release the headroom file and evict by the usual policy
        (lowest priority, oldest first) until the segments are at most 90 % of what they
        were and ``need`` plus a new headroom fit in what was freed; then reserve the headroom
        again. True when anything was freed (worth trying the write again)."""
        self._disk_full += 1
        released = self._release_headroom()
        before = self._total_bytes
        target = max(0, min(int(before * _EVICT_TO_FRACTION), before - need - self._headroom_size()))
        if not self._full_logged:
            logger.warning(
                "spool %s: disk full (%s) with %d bytes in segments: evicting by priority down to %d bytes",
                self._dir,
                problem,
                before,
                target,
            )
        evicted = 0
        try:
            evicted = self._enforce_locked(force_age=False, target_bytes=target)
        except SpoolError as exc:
            logger.error("spool %s: could not evict on a full disk: %s", self._dir, exc)
        self._reserve_headroom()
        self._full_logged = True
        return released or evicted > 0

    def _headroom_size(self) -> int:
        return self._config.segment_bytes + _HEADROOM_EXTRA

    def _open_headroom(self) -> None:
        """Open the headroom file and release its space for the writes of recovery."""
        path = self._dir / _HEADROOM_NAME
        try:
            self._headroom_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise SpoolUnavailableError(f"{path}: cannot open: {exc.strerror}") from exc
        self._release_headroom()

    def _release_headroom(self) -> bool:
        if self._headroom_fd < 0:
            return False
        try:
            had = os.fstat(self._headroom_fd).st_size > 0
            os.ftruncate(self._headroom_fd, 0)
        except OSError as exc:
            logger.error("spool %s: cannot release the headroom file: %s", self._dir, exc)
            return False
        self._headroom = 0
        return had

    def _reserve_headroom(self) -> bool:
        size = self._headroom_size()
        if self._headroom_fd < 0 or self._headroom >= size:
            return self._headroom >= size
        try:
            os.posix_fallocate(self._headroom_fd, 0, size)
        except OSError as exc:
            self._headroom_errno = exc.errno
            if not self._full_logged:
                logger.error(
                    "spool %s: cannot reserve %d bytes of headroom (%s): the next eviction on a "
                    "full disk may not find room",
                    self._dir,
                    size,
                    exc.strerror or exc,
                )
            return False
        self._headroom = size
        self._headroom_errno = None
        return True

    def pending(self, after_seq: int = 0) -> Iterator[SpoolRecord]:
        """Yield unacknowledged records with seq > ``after_seq`` in seq order, tombstones included.

        The range is fixed when iteration starts (later appends are not included); a record
        acknowledged while iterating is skipped, one evicted meanwhile comes as a tombstone.
        A record whose stored bytes no longer match their checksum (or do not decompress) comes
        as a ``"corrupt"`` tombstone whose ``detail`` names file and offset (logged at ERROR,
        counted, written to disk). Raises :class:`SpoolUnavailableError` when a segment cannot
        be read at all (an I/O error).
        """
        with self._mutex:
            self._check_open()
            start = max(after_seq, self._acked) + 1
            stop = self._next_seq
        for seq in range(start, stop):
            with self._mutex:
                self._check_open()
                entry = self._index.get(seq)
                if entry is None:
                    continue
                record = self._read(seq, entry)
            yield record

    def ack(self, up_to_seq: int) -> None:
        """Mark seqs 1..``up_to_seq`` as durably received upstream and free their space.

        The watermark is written before ``ack`` returns (``fdatasync``-ed in ``"power-loss"``
        mode); segments holding only acknowledged records are deleted. An ack at or below the
        current watermark does nothing; one at or above ``next_seq`` raises
        :class:`SpoolUsageError`.
        """
        with self._mutex:
            self._check_open()
            if up_to_seq <= self._acked:
                return
            if up_to_seq >= self._next_seq:
                raise SpoolUsageError(
                    f"cannot ack seq {up_to_seq}: highest appended seq is {self._next_seq - 1}"
                )
            previous = self._acked
            self._write_ack(up_to_seq, sync=self._power_loss)
            for seq in range(previous + 1, up_to_seq + 1):
                self._index.pop(seq, None)
                self._intent.pop(seq, None)
                self._details.pop(seq, None)
            self._drop_acked_segments()

    def enforce_bounds(self) -> int:
        """Apply the byte and age bounds now; return how many records were evicted."""
        with self._mutex:
            self._check_open()
            return self._enforce_locked(force_age=True)

    def take_eviction_report(self) -> EvictionReport:
        """Return the losses since the previous call and remember (durably) that they were taken."""
        with self._mutex:
            self._check_open()
            by_priority = {
                prio: count - self._evicted_reported.get(prio, 0)
                for prio, count in sorted(self._evicted.items())
                if count > self._evicted_reported.get(prio, 0)
            }
            report = EvictionReport(
                by_priority, self._expired - self._expired_reported, self._lost - self._lost_reported
            )
            if report.total:
                self._evicted_reported = dict(self._evicted)
                self._expired_reported = self._expired
                self._lost_reported = self._lost
                self._write_state()
            return report

    def stats(self) -> SpoolStats:
        """Counts of records, bytes, acks, evictions and repairs (O(records))."""
        with self._mutex:
            self._check_open()
            records = 0
            oldest: int | None = None
            for entry in self._index.values():
                if not entry.is_tombstone:
                    records += 1
                    if oldest is None or entry.created_ns < oldest:
                        oldest = entry.created_ns
            return SpoolStats(
                boot_epoch=self._boot_epoch,
                next_seq=self._next_seq,
                acked_seq=self._acked,
                records=records,
                tombstones=len(self._index) - records,
                bytes=self._total_bytes,
                segments=len(self._segments),
                evicted_by_priority=dict(sorted(self._evicted.items())),
                expired=self._expired,
                repaired_regions=self._repairs,
                lost_to_corruption=self._lost,
                oldest_age_s=None if oldest is None else max(0.0, (self._clock_ns() - oldest) / 1e9),
                disk_full=self._disk_full,
                headroom_bytes=self._headroom,
                unspooled=self._unspooled,
            )

    def close(self) -> None:
        """Release files and the directory lock. Idempotent; later calls to other methods raise
        :class:`tcu.errors.ClosedResourceError`."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            try:
                # A clean close makes everything durable, whatever the mode, and says so.
                for seg in self._segments:
                    if seg.write_fd >= 0:
                        os.fdatasync(seg.write_fd)
                self._sync_ack()
                self._release_headroom()  # room for the state write on a full disk
                self._write_state()
            except (OSError, SpoolError) as exc:
                logger.error("spool %s: could not sync on close: %s", self._dir, exc)
            finally:
                self._close_fds()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError(f"spool {self._dir} is closed")

    def _close_fds(self, *, keep_lock: bool = False) -> None:
        for seg in self._segments:
            self._close_segment_fds(seg)
        for slot_file in (self._ack_file, self._reserve_file, self._epoch_file):
            if slot_file is not None:
                with contextlib.suppress(OSError):
                    slot_file.close()
        if self._headroom_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._headroom_fd)
            self._headroom_fd = -1
        if self._lock_fd >= 0 and not keep_lock:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = -1

    @staticmethod
    def _close_segment_fds(seg: _Segment) -> None:
        for fd in (seg.read_fd, seg.write_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        seg.read_fd = seg.write_fd = -1

    def _os_error(self, path: Path, what: str, exc: OSError) -> SpoolFullError | SpoolUnavailableError:
        reason = exc.strerror or str(exc)
        if exc.errno in _FULL_ERRNOS:
            return SpoolFullError(f"{path}: {what}: {reason} (errno {exc.errno})")
        return SpoolUnavailableError(f"{path}: {what}: {reason} (errno {exc.errno})")

    @staticmethod
    def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written

    def _sync_dir(self) -> None:
        fsync_directory(self._dir)

    def _open_read(self, path: Path) -> int:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SpoolUnavailableError(f"{path}: cannot open segment: {exc.strerror}") from exc

    def _active_segment(self, rec_len: int) -> _Segment:
        seg = self._segments[-1] if self._segments else None
        if seg is not None and (seg.size == 0 or seg.size + rec_len <= self._config.segment_bytes):
            if seg.write_fd < 0:
                try:
                    seg.write_fd = os.open(seg.path, os.O_WRONLY | os.O_CLOEXEC)
                except OSError as exc:
                    raise self._os_error(seg.path, "cannot open segment for appending", exc) from exc
            return seg
        if seg is not None and seg.write_fd >= 0:
            os.close(seg.write_fd)
            seg.write_fd = -1
        path = self._dir / _seg_name(self._next_seq)
        try:
            write_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise self._os_error(path, "cannot create segment", exc) from exc
        new = _Segment(path, self._next_seq)
        new.write_fd = write_fd
        new.read_fd = self._open_read(path)
        self._segments.append(new)
        if self._power_loss:
            try:
                self._sync_dir()
            except OSError as exc:
                raise self._os_error(
                    self._dir, "cannot sync directory after creating a segment", exc
                ) from exc
        return new

    def _read(self, seq: int, entry: _Entry) -> SpoolRecord:
        reason = _reason(entry.flags)
        if reason is not None:
            return SpoolRecord(
                seq, entry.priority, entry.created_ns, b"", entry.raw_len, reason, self._details.get(seq, "")
            )
        seg = entry.seg
        try:
            data = os.pread(seg.read_fd, fmt.HEADER_LEN + entry.stored_len, entry.offset)
        except OSError as exc:
            raise SpoolUnavailableError(
                f"{seg.path}: cannot read offset {entry.offset}: {exc.strerror}"
            ) from exc
        header, stored = data[: fmt.HEADER_LEN], data[fmt.HEADER_LEN :]
        if len(stored) != entry.stored_len or not fmt.check_payload(header, stored):
            return self._lost_on_read(seq, entry, "fails its checksum on read")
        if entry.flags & fmt.FLAG_ZSTD:
            try:
                payload = self._decompressor.decompress(stored, max_output_size=entry.raw_len)
            except zstandard.ZstdError as exc:
                return self._lost_on_read(seq, entry, f"does not decompress: {exc}")
        else:
            payload = stored
        return SpoolRecord(seq, entry.priority, entry.created_ns, payload, entry.raw_len, None)

    def _lost_on_read(self, seq: int, entry: _Entry, problem: str) -> SpoolRecord:
        """A record whose bytes went bad after they were checked on open: it becomes a
        ``"corrupt"`` tombstone (same seq, priority, time and length; rewritten on disk like an
        eviction), counted in ``lost_to_corruption``, so the stream of seqs goes on."""
        path, offset = entry.seg.path, entry.offset
        logger.error(
            "spool %s: record seq %d at offset %d %s; it becomes a 'corrupt' tombstone",
            path,
            seq,
            offset,
            problem,
        )
        self._lost += 1
        self._details[seq] = f"{path} offset {offset}: {problem}"
        flags = fmt.FLAG_TOMBSTONE | fmt.FLAG_REASON_CORRUPT
        self._intent[seq] = flags
        try:
            self._write_state()  # the count and the intent first, as for an eviction
            self._apply_intent()
        except SpoolError as exc:
            # Sent as a tombstone all the same; the rewrite is retried with the next eviction
            # or open (an open that finds the bad bytes first counts them once more).
            logger.error("spool %s: could not write the tombstone of seq %d: %s", self._dir, seq, exc)
        return SpoolRecord(
            seq, entry.priority, entry.created_ns, b"", entry.raw_len, "corrupt", self._details[seq]
        )

    def _drop_acked_segments(self) -> None:
        dropped = False
        while self._segments and self._segments[0].hi <= self._acked:
            seg = self._segments[0]
            # A fully acked active segment goes too: the next append starts a new one named
            # after next_seq, so segment names keep telling what was acknowledged.
            self._close_segment_fds(seg)
            try:
                seg.path.unlink(missing_ok=True)
            except OSError as exc:
                raise self._os_error(seg.path, "cannot delete acknowledged segment", exc) from exc
            self._total_bytes -= seg.size
            self._segments.pop(0)
            dropped = True
        if self._segments:
            self._segments[0].lo = max(self._segments[0].lo, self._acked + 1)
        if dropped and self._power_loss:
            try:
                self._sync_dir()
            except OSError as exc:
                raise self._os_error(self._dir, "cannot sync directory after deleting segments", exc) from exc

    def _rewrite(self, seg: _Segment, tombstones: Mapping[int, int]) -> None:
        """Rewrite ``seg`` without acked records and garbage, turning ``tombstones`` (seq → flags)
        and corrupt gaps into tombstone records. Atomic: tmp file, fsync, rename, fsync dir."""
        lo = max(seg.lo, self._acked + 1)
        parts: list[bytes] = []
        placed: list[tuple[int, int, int, int]] = []  # seq, offset, flags, stored_len
        offset = 0
        for seq in range(lo, seg.hi + 1):
            entry = self._index[seq]
            if entry.seg is not seg:
                raise AssertionError(f"spool index: seq {seq} is not in {seg.path}")
            new_flags = tombstones.get(seq)
            if new_flags is not None and not entry.is_tombstone:
                flags = new_flags | (entry.flags & ~fmt.FLAG_ZSTD)
                rec = fmt.encode(
                    flags=flags,
                    priority=entry.priority,
                    seq=seq,
                    created_ns=entry.created_ns,
                    stored=b"",
                    raw_len=entry.raw_len,
                )
            elif entry.offset < 0:
                flags = entry.flags
                rec = fmt.encode(flags=flags, priority=0, seq=seq, created_ns=0, stored=b"", raw_len=0)
            else:
                flags = entry.flags
                rec = os.pread(seg.read_fd, fmt.HEADER_LEN + entry.stored_len, entry.offset)
            parts.append(rec)
            placed.append((seq, offset, flags, len(rec) - fmt.HEADER_LEN))
            offset += len(rec)
        self._replace_file(seg.path, b"".join(parts))
        self._close_segment_fds(seg)
        seg.read_fd = self._open_read(seg.path)
        for seq, rec_offset, flags, stored_len in placed:
            entry = self._index[seq]
            entry.offset, entry.flags, entry.stored_len = rec_offset, flags, stored_len
        self._total_bytes += offset - seg.size
        seg.size = offset
        seg.lo = lo

    def _enforce_locked(self, *, force_age: bool, target_bytes: int | None = None) -> int:
        if self._intent:
            self._apply_intent()
        now_ns = self._clock_ns()
        victims: dict[int, int] = {}
        max_age_s = self._config.max_age_s
        if max_age_s is not None and (force_age or now_ns >= self._next_age_check_ns):
            self._next_age_check_ns = now_ns + _AGE_CHECK_PERIOD_NS
            cutoff_ns = now_ns - int(max_age_s * 1e9)
            for seq, entry in self._index.items():
                if not entry.is_tombstone and entry.created_ns < cutoff_ns:
                    victims[seq] = fmt.FLAG_TOMBSTONE | fmt.FLAG_REASON_AGE
        max_bytes = self._config.max_bytes
        if target_bytes is not None or self._total_bytes > max_bytes:
            target = int(max_bytes * _EVICT_TO_FRACTION) if target_bytes is None else target_bytes
            projected = self._total_bytes - sum(self._index[seq].stored_len for seq in victims)
            if projected > target:
                candidates = sorted(
                    (entry.priority, seq)
                    for seq, entry in self._index.items()
                    if not entry.is_tombstone and seq not in victims
                )
                for _prio, seq in candidates:
                    if projected <= target:
                        break
                    victims[seq] = fmt.FLAG_TOMBSTONE
                    projected -= self._index[seq].stored_len
        if not victims:
            return 0
        self._evict(victims)
        return len(victims)

    def _evict(self, victims: dict[int, int]) -> None:
        burst: dict[int, int] = {}
        freed = 0
        expired = 0
        for seq, flags in victims.items():
            entry = self._index[seq]
            burst[entry.priority] = burst.get(entry.priority, 0) + 1
            freed += entry.stored_len
            if flags & fmt.FLAG_REASON_AGE:
                expired += 1
        for prio, count in burst.items():
            self._evicted[prio] = self._evicted.get(prio, 0) + count
        self._expired += expired
        # Write-ahead: the counts and the victims are durable before any segment changes, so a
        # crash in the middle is finished by the next open and nothing is counted twice.
        self._intent.update(victims)
        self._write_state()
        logger.warning(
            "spool %s: evicted %d records (%d for age) by priority %s, freeing %d bytes "
            "(max_bytes %d, max_age_s %s)",
            self._dir,
            len(victims),
            expired,
            dict(sorted(burst.items())),
            freed,
            self._config.max_bytes,
            self._config.max_age_s,
        )
        self._apply_intent()

    def _apply_intent(self) -> None:
        by_segment: dict[int, dict[int, int]] = {}
        for seq, flags in self._intent.items():
            entry = self._index.get(seq)
            if entry is None or entry.is_tombstone:
                continue
            by_segment.setdefault(id(entry.seg), {})[seq] = flags
        if by_segment:
            self._sync_ack()
            for seg in list(self._segments):
                tomb = by_segment.get(id(seg))
                if tomb:
                    was_active = seg.write_fd >= 0
                    self._rewrite(seg, tomb)
                    if was_active:
                        try:
                            seg.write_fd = os.open(seg.path, os.O_WRONLY | os.O_CLOEXEC)
                        except OSError as exc:
                            raise self._os_error(
                                seg.path, "cannot reopen segment for appending", exc
                            ) from exc
        self._intent.clear()
        self._write_state()
