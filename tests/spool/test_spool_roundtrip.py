"""Append, read back, acknowledge and reopen a real spool directory."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from pathlib import Path

import pytest

import tcu.spool
from tcu.errors import ClosedResourceError, ConfigError, SpoolError
from tcu.spool import (
    Spool,
    SpoolConfig,
    SpoolLockedError,
    SpoolUsageError,
)


def payload_for(seq: int, size: int = 3000) -> bytes:
    block = hashlib.sha256(seq.to_bytes(8, "little")).digest()
    return (block * (size // len(block) + 1))[:size]


NOW_NS = time.time_ns()


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.log"))


@pytest.mark.parametrize("durability", ["power-loss", "crash"])
def test_append_pending_ack_round_trip(tmp_path: Path, durability: str) -> None:
    config = SpoolConfig(tmp_path / "spool", durability=durability)  # type: ignore[arg-type]
    with Spool.open(config) as spool:
        sent = {}
        for i in range(1, 6):
            record = spool.append(payload_for(i, 1000 * i), priority=i, created_ns=NOW_NS + 1_000 + i)
            assert record.seq == i
            assert record.tombstone is None
            sent[record.seq] = payload_for(i, 1000 * i)
        got = list(spool.pending())
        assert [r.seq for r in got] == [1, 2, 3, 4, 5]
        assert {r.seq: r.payload for r in got} == sent
        assert [(r.priority, r.created_ns, r.original_len) for r in got] == [
            (i, NOW_NS + 1_000 + i, 1000 * i) for i in range(1, 6)
        ]
        spool.ack(3)
        assert [r.seq for r in spool.pending()] == [4, 5]
        assert [r.seq for r in spool.pending(after_seq=4)] == [5]
        assert [r.seq for r in spool.pending(after_seq=1)] == [4, 5]
        stats = spool.stats()
        assert (stats.acked_seq, stats.next_seq, stats.records, stats.tombstones) == (3, 6, 2, 0)
        spool.ack(2)  # below the watermark: nothing happens
        assert spool.stats().acked_seq == 3
        with pytest.raises(SpoolUsageError, match="highest appended seq is 5"):
            spool.ack(6)
        with pytest.raises(ValueError, match="priority"):
            spool.append(b"x", priority=256, created_ns=NOW_NS + 1)


def test_reopen_keeps_epoch_next_seq_and_unacked(tmp_path: Path) -> None:
    config = SpoolConfig(tmp_path / "spool", segment_bytes=8192)
    spool = Spool.open(config)
    epoch = spool.boot_epoch
    for i in range(1, 11):
        spool.append(payload_for(i), priority=1, created_ns=NOW_NS + i)
    spool.ack(4)
    spool.close()

    spool = Spool.open(config)
    assert spool.boot_epoch == epoch
    pending = list(spool.pending())
    assert [r.seq for r in pending] == list(range(5, 11))
    assert all(r.payload == payload_for(r.seq) for r in pending)
    assert spool.append(b"after restart", priority=1, created_ns=NOW_NS + 11).seq == 11
    spool.close()

    other = Spool.open(SpoolConfig(tmp_path / "other"))
    assert other.boot_epoch != epoch
    assert other.append(b"first", priority=0, created_ns=NOW_NS + 0).seq == 1
    other.close()


def test_zstd_round_trip_and_mixed_modes(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    compressible = b"Vehicle.Speed=42.0;" * 500
    incompressible = os.urandom(5000)
    with Spool.open(SpoolConfig(directory, compression="zstd")) as spool:
        spool.append(compressible, priority=1, created_ns=NOW_NS + 1)
        spool.append(incompressible, priority=1, created_ns=NOW_NS + 2)
        on_disk = sum(p.stat().st_size for p in segment_files(directory))
        # The compressible payload shrank; the random one was kept raw (never grows).
        assert on_disk < len(compressible) // 5 + len(incompressible) + 2 * 36 + 1
        assert [r.payload for r in spool.pending()] == [compressible, incompressible]
    # A spool reopened without compression still reads the compressed records.
    with Spool.open(SpoolConfig(directory, compression="none")) as spool:
        spool.append(compressible, priority=1, created_ns=NOW_NS + 3)
        assert [r.payload for r in spool.pending()] == [compressible, incompressible, compressible]
        assert [r.original_len for r in spool.pending()] == [9500, 5000, 9500]


def test_segments_rotate_and_acked_segments_are_deleted(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    config = SpoolConfig(directory, segment_bytes=4096, max_bytes=1 << 20)
    with Spool.open(config) as spool:
        for i in range(1, 21):
            spool.append(payload_for(i, 1000), priority=0, created_ns=NOW_NS + i)
        names = [p.name for p in segment_files(directory)]
        assert len(names) == 7  # three 1036-byte records fit in 4096
        assert names[0] == "seg-00000000000000000001.log"
        assert names[1] == "seg-00000000000000000004.log"
        spool.ack(6)
        assert [p.name for p in segment_files(directory)] == names[2:]
        spool.ack(20)
        assert segment_files(directory) == []
        assert spool.stats().bytes == 0
    with Spool.open(config) as spool:
        assert list(spool.pending()) == []
        assert spool.append(b"next", priority=0, created_ns=NOW_NS + 21).seq == 21


def test_pending_skips_records_acked_while_iterating(tmp_path: Path) -> None:
    with Spool.open(SpoolConfig(tmp_path / "spool")) as spool:
        for i in range(1, 6):
            spool.append(payload_for(i, 100), priority=0, created_ns=NOW_NS + i)
        seen = []
        for record in spool.pending():
            seen.append(record.seq)
            if record.seq == 2:
                spool.ack(4)
                spool.append(b"late", priority=0, created_ns=NOW_NS + 6)
        assert seen == [1, 2, 5]  # 3 and 4 were acked meanwhile; 6 came after the start


def test_close_is_idempotent_and_use_after_close_raises(tmp_path: Path) -> None:
    spool = Spool.open(SpoolConfig(tmp_path / "spool"))
    spool.append(b"x", priority=0, created_ns=NOW_NS + 0)
    spool.close()
    spool.close()
    with pytest.raises(ClosedResourceError):
        spool.append(b"y", priority=0, created_ns=NOW_NS + 0)
    with pytest.raises(ClosedResourceError):
        list(spool.pending())
    with pytest.raises(ClosedResourceError):
        spool.stats()


def test_second_open_of_the_same_directory_is_refused(tmp_path: Path) -> None:
    config = SpoolConfig(tmp_path / "spool")
    with Spool.open(config), pytest.raises(SpoolLockedError, match=re.escape(str(tmp_path / "spool"))):
        Spool.open(config)
    Spool.open(config).close()  # the lock went with close()


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"spool\.max_bytes"):
        SpoolConfig(Path("/nonexistent"), max_bytes=100)
    with pytest.raises(ConfigError, match=r"spool\.durability"):
        SpoolConfig(Path("/nonexistent"), durability="fast")  # type: ignore[arg-type]


def test_public_names() -> None:
    assert sorted(tcu.spool.__all__) == [
        "Compression",
        "Durability",
        "EvictionReport",
        "Spool",
        "SpoolConfig",
        "SpoolCorruptError",
        "SpoolError",
        "SpoolFullError",
        "SpoolLockedError",
        "SpoolRecord",
        "SpoolStats",
        "SpoolTooLargeError",
        "SpoolUnavailableError",
        "SpoolUsageError",
        "TombstoneReason",
    ]
    assert issubclass(tcu.spool.SpoolFullError, SpoolError)
    assert issubclass(tcu.spool.SpoolTooLargeError, tcu.spool.SpoolFullError)


def test_bytes_damaged_after_open_fail_loudly_on_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "spool"
    with Spool.open(SpoolConfig(directory)) as spool:
        for i in range(1, 4):
            spool.append(payload_for(i, 500), priority=0, created_ns=NOW_NS + i)
        (segment,) = segment_files(directory)
        data = bytearray(segment.read_bytes())
        data[536 + 36 + 100] ^= 0xFF  # inside seq 2's payload
        segment.write_bytes(bytes(data))
        records = spool.pending()
        assert next(records).seq == 1
        with caplog.at_level(logging.ERROR, logger="tcu.spool"):
            lost = next(records)  # loud, and the stream of seqs goes on
        assert (lost.seq, lost.tombstone, lost.detail) == (
            2,
            "corrupt",
            f"{segment} offset 536: fails its checksum on read",
        )
        assert f"{segment}: record seq 2 at offset 536 fails its checksum on read" in caplog.text
        assert next(records).seq == 3
        assert spool.stats().lost_to_corruption == 1


def test_threads_share_one_spool(tmp_path: Path) -> None:
    config = SpoolConfig(tmp_path / "spool", durability="crash", segment_bytes=16384)
    with Spool.open(config) as spool:
        errors: list[BaseException] = []

        def producer(priority: int) -> None:
            try:
                for _ in range(300):
                    spool.append(payload_for(priority, 700), priority=priority, created_ns=time.time_ns())
            except BaseException as exc:
                errors.append(exc)
                raise

        def consumer() -> None:
            try:
                for _ in range(50):
                    last = 0
                    for record in spool.pending():
                        assert record.seq > last
                        assert record.payload == payload_for(record.priority, 700)
                        last = record.seq
                    if last > 10:
                        spool.ack(last - 10)
            except BaseException as exc:
                errors.append(exc)
                raise

        threads = [threading.Thread(target=producer, args=(p,)) for p in (1, 2)]
        threads.append(threading.Thread(target=consumer))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        stats = spool.stats()
        assert stats.next_seq == 601
        assert [r.seq for r in spool.pending()] == list(range(stats.acked_seq + 1, 601))
