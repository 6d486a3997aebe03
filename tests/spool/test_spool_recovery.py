"""Torn tails and corrupt bytes in real segment files are found, repaired, counted and reported."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcu.agent.outbox import SpoolOutbox
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.spool import Spool, SpoolConfig, SpoolCorruptError

HEADER_LEN = 36
NOW_NS = time.time_ns()


def payload_for(seq: int, size: int = 1000) -> bytes:
    block = hashlib.sha256(seq.to_bytes(8, "little")).digest()
    return (block * (size // len(block) + 1))[:size]


def fill(directory: Path, count: int, *, size: int = 1000, segment_bytes: int = 1 << 20) -> SpoolConfig:
    config = SpoolConfig(directory, segment_bytes=segment_bytes, max_bytes=16 << 20)
    with Spool.open(config) as spool:
        for i in range(1, count + 1):
            spool.append(payload_for(i, size), priority=i % 3, created_ns=NOW_NS + i)
    return config


def only_segment(directory: Path) -> Path:
    (segment,) = directory.glob("seg-*.log")
    return segment


def damage(path: Path, offset: int, length: int) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + length):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("cut_into_last", [1, 20, HEADER_LEN + 500])
def test_torn_tail_becomes_a_tombstone_and_its_seq_is_never_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cut_into_last: int
) -> None:
    directory = tmp_path / "spool"
    config = SpoolConfig(directory, segment_bytes=1 << 20, max_bytes=16 << 20)
    handed_out: dict[int, bytes] = {}
    with Spool.open(config) as spool:
        for i in range(1, 11):
            handed_out[spool.append(payload_for(i), priority=1, created_ns=NOW_NS + i).seq] = payload_for(i)
    segment = only_segment(directory)
    record_len = HEADER_LEN + 1000
    # A power cut while writing record 10 (or bytes lost later): only its first bytes are on disk.
    # Seq 10 may have gone upstream already, so it must never carry other content.
    with segment.open("r+b") as fh:
        fh.truncate(9 * record_len + cut_into_last)

    with caplog.at_level(logging.WARNING, logger="tcu.spool"), Spool.open(config) as spool:
        stats = spool.stats()
        assert stats.repaired_regions == 1
        assert stats.lost_to_corruption == 1
        records = list(spool.pending())
        expected = [(s, None) for s in range(1, 10)] + [(10, "corrupt")]
        assert [(r.seq, r.tombstone) for r in records] == expected
        assert all(r.payload == payload_for(r.seq) for r in records[:9])
        assert spool.take_eviction_report().lost_to_corruption == 1
        for i in range(11, 14):
            record = spool.append(b"new %d" % i, priority=0, created_ns=NOW_NS)
            assert record.seq not in handed_out  # never a seq given out before
            handed_out[record.seq] = record.payload
    assert f"{segment}: torn record at offset {9 * record_len}" in caplog.text

    with Spool.open(config) as spool:  # the repair is durable: not found (nor counted) again
        assert spool.stats().repaired_regions == 1
        assert spool.stats().lost_to_corruption == 1
        records = list(spool.pending())
        assert [r.seq for r in records] == list(range(1, 14))
        for r in records:
            if r.tombstone is None:
                assert r.payload == handed_out[r.seq]  # no seq ever carried two contents
        assert [r.seq for r in records if r.tombstone] == [10]
        # What the ingest receives for seq 10: a batch without samples that carries the loss.
        sent = dict(SpoolOutbox(spool, vehicle_id="WTCUTORN000000001").pending())
        loss = telemetry_pb.TelemetryBatch.FromString(sent[10])
        assert loss.HasField("loss") and loss.loss.reason.startswith("corrupt")
        assert not loss.columns


def test_torn_tail_of_an_append_interrupted_by_a_kill_is_cut_off(tmp_path: Path) -> None:
    """The process died while appending seq 10 (the spool was not closed): that append never
    returned, so seq 10 was never handed out and is used by the next batch, without a loss."""
    config = SpoolConfig(tmp_path / "spool", segment_bytes=1 << 20, max_bytes=16 << 20)
    image = tmp_path / "after-kill"
    with Spool.open(config) as spool:
        for i in range(1, 11):
            spool.append(payload_for(i), priority=1, created_ns=NOW_NS + i)
        shutil.copytree(config.directory, image)  # as a kill -9 leaves it (not closed)
    with (image / "seg-00000000000000000001.log").open("r+b") as fh:
        fh.truncate(9 * (HEADER_LEN + 1000) + 100)
    with Spool.open(SpoolConfig(image, segment_bytes=1 << 20, max_bytes=16 << 20)) as spool:
        stats = spool.stats()
        assert (stats.repaired_regions, stats.lost_to_corruption, stats.tombstones) == (1, 0, 0)
        assert spool.append(b"next", priority=1, created_ns=NOW_NS).seq == 10


@pytest.mark.parametrize(
    ("where", "length", "lost"),
    [
        (HEADER_LEN + 400, 8, [4]),  # inside record 4's payload
        (0, 4, [4]),  # record 4's magic
        (8, 2, [4]),  # record 4's seq field
        (500, 2 * (HEADER_LEN + 1000), [4, 5, 6]),  # across records 4..6
    ],
)
def test_corruption_mid_segment_is_skipped_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, where: int, length: int, lost: list[int]
) -> None:
    directory = tmp_path / "spool"
    config = fill(directory, 10)
    segment = only_segment(directory)
    start = 3 * (HEADER_LEN + 1000) + where
    damage(segment, start, length)

    with caplog.at_level(logging.WARNING, logger="tcu.spool"), Spool.open(config) as spool:
        records = list(spool.pending())
        assert [r.seq for r in records] == list(range(1, 11))  # still gapless
        assert [r.seq for r in records if r.tombstone == "corrupt"] == lost
        assert all(r.payload == payload_for(r.seq) for r in records if r.tombstone is None)
        stats = spool.stats()
        assert (stats.repaired_regions, stats.lost_to_corruption) == (1, len(lost))
        report = spool.take_eviction_report()
        assert report.lost_to_corruption == len(lost)
        assert spool.append(b"new", priority=0, created_ns=NOW_NS).seq == 11
    assert f"{segment}: corrupt bytes at offset {3 * (HEADER_LEN + 1000)}" in caplog.text
    assert f"records seq {lost[0]}..{lost[-1]} were lost to corruption" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tcu.spool"), Spool.open(config) as spool:
        # Repaired on disk: the next open finds nothing new and keeps the tombstones.
        stats = spool.stats()
        assert (stats.repaired_regions, stats.lost_to_corruption, stats.tombstones) == (
            1,
            len(lost),
            len(lost),
        )
        assert spool.take_eviction_report().total == 0
        spool.ack(11)  # tombstones do not hold the watermark back
        assert list(spool.pending()) == []
    assert caplog.text == ""


def test_damaged_complete_last_record_does_not_reuse_its_seq(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    config = fill(directory, 10)
    damage(only_segment(directory), 9 * (HEADER_LEN + 1000) + HEADER_LEN + 10, 1)  # bit rot in seq 10
    with Spool.open(config) as spool:
        records = list(spool.pending())
        assert [(r.seq, r.tombstone) for r in records][-2:] == [(9, None), (10, "corrupt")]
        # seq 10 may already have gone upstream: a new batch must not get it.
        assert spool.append(b"new", priority=0, created_ns=NOW_NS).seq == 11


def test_lost_tail_of_an_older_segment_becomes_tombstones(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    config = fill(directory, 12, segment_bytes=4096)  # 3 records of 1036 bytes per segment
    first = sorted(directory.glob("seg-*.log"))[0]
    with first.open("r+b") as fh:
        fh.truncate(HEADER_LEN + 1000 + 100)  # records 2 and 3 gone, 2 torn
    for _ in range(2):
        with Spool.open(config) as spool:
            records = list(spool.pending())
            assert [r.seq for r in records] == list(range(1, 13))
            assert [r.seq for r in records if r.tombstone] == [2, 3]
            assert spool.stats().lost_to_corruption == 2
    assert first.name == "seg-00000000000000000001.log"


def test_eviction_interrupted_by_a_crash_is_finished_on_open(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    config = fill(directory, 5)
    # State as written just before the segment rewrite: counts taken, victims named.
    state_path = directory / "state.json"
    state = json.loads(state_path.read_text())
    state["evicted"] = {"0": 1}
    state["eviction_intent"] = [[3, 2]]
    state_path.write_text(json.dumps(state))
    with Spool.open(config) as spool:
        assert [(r.seq, r.tombstone) for r in spool.pending()][2] == (3, "evicted")
        assert spool.take_eviction_report().evicted_by_priority == {0: 1}
    assert json.loads(state_path.read_text())["eviction_intent"] == []


@pytest.mark.parametrize("damage_state", ["delete", "empty", "half", "delete-with-ack"])
def test_lost_or_truncated_state_file_is_rebuilt_from_the_spool_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage_state: str
) -> None:
    directory = tmp_path / "spool"
    config = fill(directory, 10)
    with Spool.open(config) as spool:
        epoch = spool.boot_epoch
        spool.ack(3)
    state = directory / "state.json"
    first_pending = 4
    if damage_state.startswith("delete"):
        state.unlink()
        if damage_state == "delete-with-ack":
            (directory / "ack").unlink()
            first_pending = 1  # from the segment's name: conservative, the ingest dedups the resend
    else:
        text = state.read_bytes()
        state.write_bytes(b"" if damage_state == "empty" else text[: len(text) // 2])
    with caplog.at_level(logging.WARNING, logger="tcu.spool"), Spool.open(config) as spool:
        assert spool.boot_epoch == epoch  # the same identity: what the ingest has is deduplicated
        records = list(spool.pending())
        assert [r.seq for r in records] == list(range(first_pending, 11))
        assert all(r.tombstone is None and r.payload == payload_for(r.seq) for r in records)
        assert spool.append(b"next", priority=0, created_ns=NOW_NS).seq == 11
    assert f"{state}: " in caplog.text and "rebuilt" in caplog.text
    with Spool.open(config) as spool:  # the rebuilt state was written
        assert spool.boot_epoch == epoch
        assert [r.seq for r in spool.pending()] == list(range(first_pending, 12))


def test_state_that_cannot_be_rebuilt_is_refused_naming_the_file(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    config = fill(directory, 4)
    (directory / "state.json").unlink()
    (directory / "epoch").unlink()  # the boot epoch is gone with it
    with pytest.raises(SpoolCorruptError, match=r"state.json: state file is missing") as info:
        Spool.open(config)
    assert "on_damage" in str(info.value) and "\n" not in str(info.value)
    # Refused, not repaired: the batches are still there for someone to look at.
    assert len(list(directory.glob("seg-*.log"))) == 1


def test_start_fresh_moves_the_damaged_spool_aside_and_reports_the_loss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "spool"
    config = fill(directory, 6)
    with Spool.open(config) as spool:
        old_epoch = spool.boot_epoch
        spool.ack(2)
    (directory / "state.json").write_text("{")
    (directory / "epoch").unlink()
    fresh = SpoolConfig(directory, segment_bytes=1 << 20, max_bytes=16 << 20, on_damage="start-fresh")
    with caplog.at_level(logging.ERROR, logger="tcu.spool"), Spool.open(fresh) as spool:
        assert spool.boot_epoch != old_epoch
        records = list(spool.pending())
        # The 4 unacked batches of the old epoch cannot be sent: each is reported as lost.
        assert [(r.seq, r.tombstone) for r in records] == [(s, "corrupt") for s in range(1, 5)]
        assert all("moved to" in r.detail for r in records)
        assert spool.stats().lost_to_corruption == 4
    (aside,) = directory.glob("damaged-*")
    assert {p.name for p in aside.iterdir()} >= {"seg-00000000000000000001.log", "state.json"}
    assert str(aside) in caplog.text


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    acked=st.integers(0, 25),
    cuts=st.lists(st.tuples(st.integers(0, 20_000), st.integers(1, 300)), min_size=1, max_size=4),
    truncate_to=st.one_of(st.none(), st.integers(0, 20_000)),
)
def test_any_damage_leaves_a_gapless_spool_with_only_true_payloads(
    acked: int, cuts: list[tuple[int, int]], truncate_to: int | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "spool"
        config = fill(directory, 30, size=700, segment_bytes=8192)
        with Spool.open(config) as spool:
            spool.ack(acked)
        segments = sorted(directory.glob("seg-*.log"))
        sizes = [p.stat().st_size for p in segments]
        total = sum(sizes)
        for where, length in cuts:
            offset = where % total
            index = 0
            while offset >= sizes[index]:
                offset -= sizes[index]
                index += 1
            damage(segments[index], offset, min(length, sizes[index] - offset))
        if truncate_to is not None:
            last = segments[-1]
            with last.open("r+b") as fh:
                fh.truncate(truncate_to % (sizes[-1] + 1))
        with Spool.open(config) as spool:
            records = list(spool.pending())
            seqs = [r.seq for r in records]
            assert seqs == list(range(acked + 1, acked + 1 + len(seqs)))
            for record in records:
                if record.tombstone is None:
                    assert record.payload == payload_for(record.seq, 700)
                else:
                    assert record.tombstone == "corrupt"
            first = spool.stats()
            assert first.lost_to_corruption == sum(r.tombstone == "corrupt" for r in records)
            next_seq = spool.append(b"x", priority=0, created_ns=NOW_NS).seq
            assert next_seq == acked + len(seqs) + 1
        with Spool.open(config) as spool:
            again = spool.stats()
            assert (again.repaired_regions, again.lost_to_corruption) == (
                first.repaired_regions,
                first.lost_to_corruption,
            )
            assert [r.seq for r in spool.pending()] == [*seqs, next_seq]


def power_cut_image(directory: Path, image: Path, *, keep_records: int, record_len: int) -> None:
    """Copy an open spool as a power cut would leave it, then pretend the machine rebooted."""
    shutil.copytree(directory, image)
    (segment,) = image.glob("seg-*.log")
    with segment.open("r+b") as fh:
        fh.truncate(keep_records * record_len)  # the unsynced tail never reached the disk
    state_path = image / "state.json"
    state = json.loads(state_path.read_text())
    assert state["session"]["clean"] is False  # the copy was taken while the spool was open
    state["session"]["kernel_boot_id"] = "boot-before-the-power-cut"
    state_path.write_text(json.dumps(state))


def test_crash_mode_power_cut_never_hands_out_a_seq_twice(tmp_path: Path) -> None:
    config = SpoolConfig(tmp_path / "spool", durability="crash")
    image = tmp_path / "after-power-cut"
    with Spool.open(config) as spool:
        for i in range(1, 11):
            spool.append(payload_for(i), priority=1, created_ns=NOW_NS + i)
        # Seqs 8..10 were returned to the agent (and maybe uploaded) but were still only in
        # the page cache when the power went.
        power_cut_image(config.directory, image, keep_records=7, record_len=HEADER_LEN + 1000)

    with Spool.open(SpoolConfig(image, durability="crash")) as spool:
        records = list(spool.pending())
        assert [r.seq for r in records if r.tombstone is None] == list(range(1, 8))
        lost = [r.seq for r in records if r.tombstone == "corrupt"]
        # Everything up to the durable reservation is marked lost, so new batches get new seqs.
        assert lost == list(range(8, 257))
        assert spool.append(b"after reboot", priority=1, created_ns=NOW_NS).seq == 257
        assert spool.stats().lost_to_corruption == 249

    # A clean close, a reboot and a reopen lose nothing and skip nothing.
    state_path = config.directory / "state.json"
    state = json.loads(state_path.read_text())
    assert state["session"]["clean"] is True
    state["session"]["kernel_boot_id"] = "another-boot"
    state_path.write_text(json.dumps(state))
    with Spool.open(config) as spool:
        assert [r.seq for r in spool.pending()] == list(range(1, 11))
        assert spool.append(b"next", priority=1, created_ns=NOW_NS).seq == 11


def test_crash_mode_kill_without_reboot_skips_nothing(tmp_path: Path) -> None:
    config = SpoolConfig(tmp_path / "spool", durability="crash")
    image = tmp_path / "after-kill"
    with Spool.open(config) as spool:
        for i in range(1, 11):
            spool.append(payload_for(i), priority=1, created_ns=NOW_NS + i)
        shutil.copytree(config.directory, image)  # same kernel boot: the page cache survived
    with Spool.open(SpoolConfig(image, durability="crash")) as spool:
        assert [r.seq for r in spool.pending() if r.tombstone is None] == list(range(1, 11))
        assert spool.stats().tombstones == 0
        assert spool.append(b"next", priority=1, created_ns=NOW_NS).seq == 11


def test_checksum_failure_on_read_becomes_a_corrupt_tombstone_naming_file_and_offset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "spool"
    config = SpoolConfig(directory, segment_bytes=1 << 20, max_bytes=16 << 20)
    with Spool.open(config) as spool:
        for i in range(1, 6):
            spool.append(payload_for(i), priority=2, created_ns=NOW_NS + i)
        segment = only_segment(directory)
        offset = 2 * (HEADER_LEN + 1000)
        damage(segment, offset + HEADER_LEN + 10, 1)  # bit rot in seq 3 while the spool is open
        with caplog.at_level(logging.ERROR, logger="tcu.spool"):
            records = list(spool.pending())
        assert [(r.seq, r.tombstone) for r in records] == [
            (1, None), (2, None), (3, "corrupt"), (4, None), (5, None)
        ]
        lost = records[2]
        assert (lost.priority, lost.created_ns, lost.original_len) == (2, NOW_NS + 3, 1000)
        assert lost.detail == f"{segment} offset {offset}: fails its checksum on read"
        assert f"{segment}: record seq 3 at offset {offset} fails its checksum on read" in caplog.text
        assert spool.stats().lost_to_corruption == 1
        assert spool.take_eviction_report().lost_to_corruption == 1
        assert [r.seq for r in spool.pending() if r.tombstone] == [3]  # read again: still a tombstone
        assert spool.append(b"next", priority=0, created_ns=NOW_NS).seq == 6
    with Spool.open(config) as spool:  # the tombstone was written: nothing new is found on open
        stats = spool.stats()
        assert (stats.lost_to_corruption, stats.repaired_regions, stats.tombstones) == (1, 0, 1)
        assert [(r.seq, r.tombstone) for r in spool.pending()][2] == (3, "corrupt")
        assert spool.take_eviction_report().total == 0
