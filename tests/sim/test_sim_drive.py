"""Frame scheduling, encoding and ground truth of a drive."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import can
import numpy as np
import pytest

from sim import Drive, DriveConfig, load_ground_truth
from sim.groundtruth import GroundTruthError, UnknownSeriesError
from tcu.errors import ConfigError

START_US = 1_767_261_600_123_457


def test_twenty_seconds_decode_back_to_the_ground_truth(tmp_path: Path) -> None:
    drive = Drive(DriveConfig(duration_s=20, speed=None, seed=4, start_epoch_us=START_US))
    frames = list(drive.frames())
    db = drive.database
    gt = load_ground_truth(drive.save_ground_truth(tmp_path / "gt.npz"))
    assert gt.frames == len(frames) == 8400  # 420 frames per simulated second
    assert gt.start_us == START_US
    assert gt.end_us == round(frames[-1].timestamp * 1e6)
    index: Counter[tuple[str, str]] = Counter()
    prev_t = 0
    for row, msg in enumerate(frames):
        t_us = round(msg.timestamp * 1e6)
        assert msg.timestamp == t_us / 1e6  # whole microseconds
        assert prev_t <= t_us < START_US + 20_000_000
        prev_t = t_us
        assert (gt.frame_t_us[row], gt.frame_arbitration_id[row]) == (t_us, msg.arbitration_id)
        assert bytes(gt.frame_data[row, : gt.frame_dlc[row]]) == bytes(msg.data)
        message = db.get_message_by_frame_id(msg.arbitration_id)
        assert msg.is_extended_id == message.is_extended_frame
        decoded = db.decode_message(msg.arbitration_id, msg.data, decode_choices=False)
        for signal, value in decoded.items():
            key = (message.name, signal)
            t_col, v_col = gt.series(*key)
            i = index[key]
            index[key] += 1
            assert t_col[i] == t_us
            assert v_col[i] == value, (key, i)  # exact: the ground truth is the quantised value
    # every sample of the ground truth was checked
    keys = gt.keys()
    assert sum(index.values()) == sum(len(gt.series(*k)[0]) for k in keys)


def test_cycle_times_phases_and_multiplexer() -> None:
    drive = Drive(DriveConfig(duration_s=5, speed=None, seed=1, start_epoch_us=START_US))
    frames = list(drive.frames())
    db = drive.database
    by_id: dict[int, list[int]] = {}
    for msg in frames:
        by_id.setdefault(msg.arbitration_id, []).append(round(msg.timestamp * 1e6) - START_US)
    for message in db.messages:
        times = np.array(by_id[message.frame_id])
        cycle_us = message.cycle_time * 1000
        assert len(times) == 5_000_000 // cycle_us
        assert 0 <= times[0] < cycle_us
        assert times[0] % 1000 == 0
        assert set(np.diff(times)) == {cycle_us}
    tpms = [
        db.decode_message(m.arbitration_id, m.data)["TpmsWheel"]
        for m in frames
        if m.arbitration_id == db.get_message_by_name("TPMS_Status").frame_id
    ]
    assert [str(x) for x in tpms[:5]] == ["FrontLeft", "FrontRight", "RearLeft", "RearRight", "FrontLeft"]
    gt = drive.ground_truth()
    t_fl, _ = gt.series("TPMS_Status", "TirePressureFL")
    t_fr, _ = gt.series("TPMS_Status", "TirePressureFR")
    assert len(t_fl) == len(t_fr) == 5 and set(np.diff(t_fl)) == {1_000_000}
    assert t_fr[0] - t_fl[0] == 250_000


def test_same_seed_same_frames() -> None:
    def payloads(seed: int) -> list[tuple[float, int, bytes]]:
        drive = Drive(DriveConfig(duration_s=3, speed=None, seed=seed, start_epoch_us=START_US))
        return [(m.timestamp, m.arbitration_id, bytes(m.data)) for m in drive.frames()]

    assert payloads(3) == payloads(3)
    assert payloads(3) != payloads(4)


def test_run_onto_a_virtual_bus() -> None:
    drive = Drive(DriveConfig(duration_s=4, speed=None, seed=2, channel="sim-test"))
    with (
        can.Bus(interface="virtual", channel="sim-run-test", preserve_timestamps=True) as rx,
        can.Bus(interface="virtual", channel="sim-run-test", preserve_timestamps=True) as tx,
    ):
        summary = drive.run(tx)
        got = []
        while (msg := rx.recv(0.5)) is not None:
            got.append(msg)
    gt = drive.ground_truth()
    assert summary.frames == gt.frames == len(got) == 1680
    assert not summary.interrupted
    assert [round(m.timestamp * 1e6) for m in got] == gt.frame_t_us.tolist()
    assert [m.arbitration_id for m in got] == gt.frame_arbitration_id.tolist()
    # default start: the wall clock when the drive started
    assert abs(gt.start_us / 1e6 - time.time()) < 60


def test_speed_factor_paces_the_drive() -> None:
    drive = Drive(DriveConfig(duration_s=2, speed=10.0, seed=2))
    t0 = time.monotonic()
    n = sum(len(b) for b in drive.batches())
    elapsed = time.monotonic() - t0
    assert n == 840
    assert 0.18 <= elapsed < 1.5  # 2 simulated seconds at 10x are ~0.2 s of wall time


def test_sixty_seconds_at_max_speed_is_cheap() -> None:
    t0 = time.process_time()
    n = sum(1 for _ in Drive(DriveConfig(duration_s=60, speed=None, seed=9)).frames())
    cpu_s = time.process_time() - t0
    assert n == 25_200
    assert cpu_s < 5.0, cpu_s


def test_config_and_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="duration_s"):
        DriveConfig(duration_s=0)
    with pytest.raises(ConfigError, match="speed"):
        DriveConfig(speed=-1.0)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(GroundTruthError, match=r"bad\.npz"):
        load_ground_truth(bad)
    drive = Drive(DriveConfig(duration_s=1, speed=None))
    list(drive.frames())
    with pytest.raises(UnknownSeriesError, match=r"ESP_Speed\.Nope"):
        drive.ground_truth().series("ESP_Speed", "Nope")


@pytest.mark.parametrize("speed", [None, 20.0])
def test_stopped_drive_keeps_exactly_the_frames_handed_out(speed: float | None) -> None:
    stop = threading.Event()
    drive = Drive(DriveConfig(duration_s=600, speed=speed, seed=2, start_epoch_us=START_US))
    handed: list[can.Message] = []
    for batch in drive.batches(stop):
        handed.extend(batch)
        if len(handed) >= 1500:
            stop.set()
    gt = drive.ground_truth()
    assert gt.frames == len(handed) < 600 * 420
    assert gt.frame_t_us.tolist() == [round(m.timestamp * 1e6) for m in handed]
    per_signal = Counter[tuple[str, str]]()
    for msg in handed:
        name = drive.database.get_message_by_frame_id(msg.arbitration_id).name
        for signal in drive.database.decode_message(msg.arbitration_id, msg.data):
            per_signal[(name, signal)] += 1
    keys = gt.keys()
    assert {k: len(gt.series(*k)[0]) for k in keys} == dict(per_signal)
