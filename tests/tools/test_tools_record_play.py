"""tcu record and tcu play on a python-can virtual bus: record -> play -> decode equals the source."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import pytest
from can.interfaces import virtual

from tcu.cli.main import main
from tools.shared_data import shared_path

RAV4 = shared_path("can/logs/comma2k19_rav4_2017_seg40.log")
PT_DBC = shared_path("can/dbc/toyota_new_mc_pt_flattened.dbc")


def _rows(path: Path) -> list[list[str]]:
    """Decoded rows without the timestamp (the recording has receive times)."""
    with path.open(newline="") as handle:
        return [row[1:] for row in csv.reader(handle)]


def _source(tmp_path: Path, frames: int) -> Path:
    lines = []
    with RAV4.open() as handle:
        for line in handle:
            if " can0 " in line:
                lines.append(line)
                if len(lines) == frames:
                    break
    path = tmp_path / "source.log"
    path.write_text("".join(lines))
    return path


@pytest.mark.parametrize("suffix", [".log", ".blf", ".asc"])
def test_record_play_decode_round_trip_equals_the_source(
    tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = 500
    source = _source(tmp_path, frames)
    channel = f"rt{suffix[1:]}"
    recording = tmp_path / f"rec{suffix}"
    codes: list[int] = []
    recorder = threading.Thread(
        target=lambda: codes.append(
            main(
                [
                    "record",
                    "-i",
                    "virtual",
                    "-c",
                    channel,
                    "-w",
                    str(recording),
                    "--count",
                    str(frames),
                    "--duration",
                    "60",
                ]
            )
        )
    )
    recorder.start()
    while not virtual.channels.get(channel):  # the recorder's bus is listening
        assert recorder.is_alive()
        time.sleep(0.01)
    assert main(["play", "-I", str(source), "-i", "virtual", "--map", f"can0={channel}", "--rate", "0"]) == 0
    recorder.join(timeout=60)
    assert codes == [0]
    err = capsys.readouterr().err
    assert f"{frames} frames sent, 0 skipped" in err
    assert f"{frames} frames written" in err
    want, got = tmp_path / "want.csv", tmp_path / "got.csv"
    assert main(["decode", str(source), "--dbc", str(PT_DBC), "-o", str(want)]) == 0
    args = ["--channel", f"{channel}=can0", "--channel", "0=can0"]  # ASC numbers its channels
    assert main(["decode", str(recording), "--dbc", f"can0={PT_DBC}", *args, "-o", str(got)]) == 0
    assert len(_rows(want)) > frames
    assert _rows(got) == _rows(want)


def test_play_skips_and_counts_unmapped_channels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "two.log"
    source.write_text("(1.000000) can0 123#01\n(1.001000) can1 124#02\n(1.002000) can0 125#03\n")
    listener = virtual.VirtualBus(channel="pmap")
    try:
        assert main(["play", "-I", str(source), "-i", "virtual", "--map", "can0=pmap", "--loop", "2"]) == 0
        got = []
        while (message := listener.recv(timeout=0)) is not None:
            got.append(message.arbitration_id)
    finally:
        listener.shutdown()
    assert got == [0x123, 0x125, 0x123, 0x125]
    assert "4 frames sent, 2 skipped" in capsys.readouterr().err
