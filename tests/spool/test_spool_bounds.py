"""Byte and age bounds: eviction by priority, tombstones, counts and the persisted report."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from tcu.spool import Spool, SpoolConfig, SpoolFullError

RECORD_LEN = 36 + 2000


def offline_fill(spool: Spool, priorities: list[int], now_ns: int) -> None:
    for i, priority in enumerate(priorities):
        spool.append(bytes([priority]) * 2000, priority=priority, created_ns=now_ns + i)


def test_byte_cap_evicts_lowest_priority_oldest_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now_ns = time.time_ns()
    config = SpoolConfig(tmp_path / "spool", max_bytes=16384, segment_bytes=4096)
    with caplog.at_level(logging.WARNING, logger="tcu.spool"), Spool.open(config) as spool:
        # Offline (no acks): 8 low-priority batches, then 6 high-priority ones.
        offline_fill(spool, [0] * 8 + [2] * 6, now_ns)
        records = list(spool.pending())
        assert [r.seq for r in records] == list(range(1, 15))  # gapless, tombstones included
        evicted = [r.seq for r in records if r.tombstone == "evicted"]
        kept = [r.seq for r in records if r.tombstone is None]
        assert all(r.priority == 0 for r in records if r.tombstone)
        assert evicted == list(range(1, len(evicted) + 1))  # oldest first within the priority
        assert set(range(9, 15)) <= set(kept)  # every high-priority batch survived
        assert all(r.payload == bytes([r.priority]) * 2000 for r in records if r.tombstone is None)
        assert all(r.payload == b"" and r.original_len == 2000 for r in records if r.tombstone)
        stats = spool.stats()
        assert stats.bytes <= 16384
        assert stats.evicted_by_priority == {0: len(evicted)}
        assert (stats.records, stats.tombstones) == (len(kept), len(evicted))
        assert len(evicted) >= 7
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "evicted" in warnings[0].getMessage()
    assert len(warnings) <= len(evicted)

    # The report survives a restart until it is taken, and is taken once.
    with Spool.open(config) as spool:
        report = spool.take_eviction_report()
        assert report.evicted_by_priority == {0: len(evicted)}
        assert (report.expired, report.total) == (0, len(evicted))
        assert spool.take_eviction_report().total == 0
    with Spool.open(config) as spool:
        assert spool.take_eviction_report().total == 0
        assert spool.stats().evicted_by_priority == {0: len(evicted)}  # lifetime count stays
        # Tombstones are acked like batches: the watermark passes them and frees everything.
        spool.ack(14)
        assert list(spool.pending()) == []
        assert spool.stats().bytes == 0


def test_a_low_priority_batch_arriving_at_a_full_spool_is_the_one_evicted(tmp_path: Path) -> None:
    now_ns = time.time_ns()
    config = SpoolConfig(tmp_path / "spool", max_bytes=16384, segment_bytes=4096)
    with Spool.open(config) as spool:
        offline_fill(spool, [3] * 7, now_ns)  # 14252 bytes
        first = spool.append(b"\x01" * 2000, priority=1, created_ns=now_ns + 100)
        assert (first.seq, first.tombstone) == (8, None)  # 16288 bytes: still fits
        second = spool.append(b"\x01" * 2000, priority=1, created_ns=now_ns + 101)
        # Over the cap: both priority-1 batches go (down to 90 %), every priority-3 one stays.
        assert (second.seq, second.tombstone, second.payload) == (9, "evicted", b"")
        assert [(r.seq, r.tombstone) for r in spool.pending()][7:] == [(8, "evicted"), (9, "evicted")]
        assert spool.take_eviction_report().evicted_by_priority == {1: 2}


def test_one_burst_evicts_many_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now_ns = time.time_ns()
    directory = tmp_path / "spool"
    with Spool.open(SpoolConfig(directory, max_bytes=1 << 20, segment_bytes=8192)) as spool:
        offline_fill(spool, [0, 1, 2, 3] * 5, now_ns)
    # Reopened with a smaller cap: the first bound check is one burst.
    config = SpoolConfig(directory, max_bytes=8192, segment_bytes=8192)
    with caplog.at_level(logging.WARNING, logger="tcu.spool"), Spool.open(config) as spool:
        evicted = spool.enforce_bounds()
        assert evicted == 17  # 20 records of 2036 bytes, at most 90 % of 8192 may stay
        survivors = [r for r in spool.pending() if r.tombstone is None]
        assert [(r.seq, r.priority) for r in survivors] == [(12, 3), (16, 3), (20, 3)]
        assert spool.stats().evicted_by_priority == {0: 5, 1: 5, 2: 5, 3: 2}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "evicted 17 records" in warnings[0]
    assert "{0: 5, 1: 5, 2: 5, 3: 2}" in warnings[0]


def test_age_bound_expires_old_records(tmp_path: Path) -> None:
    now_ns = [10_000 * 10**9]
    config = SpoolConfig(tmp_path / "spool", max_age_s=60.0)
    with Spool.open(config, clock_ns=lambda: now_ns[0]) as spool:
        spool.append(b"old", priority=5, created_ns=now_ns[0] - 30 * 10**9)
        spool.append(b"new", priority=0, created_ns=now_ns[0])
        assert spool.stats().oldest_age_s == pytest.approx(30.0)
        assert spool.enforce_bounds() == 0
        now_ns[0] += 45 * 10**9  # "old" is now 75 s old, "new" 45 s
        assert spool.enforce_bounds() == 1
        assert [(r.seq, r.tombstone) for r in spool.pending()] == [(1, "expired"), (2, None)]
        stats = spool.stats()
        assert (stats.expired, stats.evicted_by_priority) == (1, {5: 1})
        assert stats.oldest_age_s == pytest.approx(45.0)
        report = spool.take_eviction_report()
        assert (report.expired, report.evicted_by_priority) == (1, {5: 1})
        # Appends check the age bound too (at most once a second).
        now_ns[0] += 20 * 10**9
        spool.append(b"newest", priority=0, created_ns=now_ns[0])
        assert [r.tombstone for r in spool.pending()] == ["expired", "expired", None]


def test_a_record_larger_than_the_cap_is_refused_without_using_a_seq(tmp_path: Path) -> None:
    config = SpoolConfig(tmp_path / "spool", max_bytes=8192, segment_bytes=4096)
    with Spool.open(config) as spool:
        with pytest.raises(SpoolFullError, match=r"exceeds max_bytes 8192"):
            spool.append(b"\x00" * 9000, priority=9, created_ns=time.time_ns())
        assert spool.append(b"small", priority=0, created_ns=time.time_ns()).seq == 1
