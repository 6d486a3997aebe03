"""tcu monitor: plain lines when piped, a table redrawn in place on a terminal, from a log and
from a live (virtual) bus; the values are those tcu decode gives for the same frames."""

from __future__ import annotations

import csv
import os
import pty
import subprocess
import sys
import threading
import time
from pathlib import Path

import can
import pytest

from tcu.cli.main import main

DBC = """VERSION ""

NS_ :

BS_:

BU_: ECU TCU

BO_ 256 Dyn: 8 ECU
 SG_ Speed : 0|16@1+ (0.01,0) [0|655.35] "km/h" TCU
 SG_ Gear : 32|4@1+ (1,0) [0|15] "" TCU

VAL_ 256 Gear 0 "P" 3 "D" ;
"""


def _log(tmp_path: Path) -> Path:
    """100 frames at 100 Hz: Speed 0.00 .. 9.90 km/h, Gear P for the first half, then D."""
    t0 = 1_796_000_000.0
    lines = []
    for i in range(100):
        speed = i * 10
        gear = 0 if i < 50 else 3
        data = speed.to_bytes(2, "little") + bytes(2) + bytes([gear]) + bytes(3)
        lines.append(f"({t0 + i / 100:.6f}) can0 100#{data.hex().upper()}\n")
    path = tmp_path / "drive.log"
    path.write_text("".join(lines))
    return path


def _monitor(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tcu.cli.main", "monitor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def test_piped_monitor_of_a_log_prints_one_line_per_change_equal_to_decode(tmp_path: Path) -> None:
    dbc = tmp_path / "m.dbc"
    dbc.write_text(DBC)
    log = _log(tmp_path)
    started = time.monotonic()
    proc = _monitor(str(log), "--dbc", str(dbc), "--rate", "4")
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    speed = [line for line in lines if ".Speed " in line]
    gear = [line for line in lines if ".Gear " in line]
    assert len(speed) == 100 and len(gear) == 2, lines[:5]  # every new speed; the gear changes once
    assert gear == [
        "1796000000.000000 can0 Dyn.Gear P (0)",
        "1796000000.500000 can0 Dyn.Gear D (3)",
    ]
    assert speed[-1] == "1796000000.990000 can0 Dyn.Speed 9.9 km/h"
    assert "\x1b[" not in proc.stdout  # no terminal codes in a pipe
    assert "tcu monitor: 100 frames, decoded 100, unknown 0, 2 signals" in proc.stderr
    # --rate 4: the log's 0.99 s take about 0.25 s (not as fast as it can be read)
    assert took >= 0.24
    # The same values as tcu decode.
    out = tmp_path / "d.csv"
    assert main(["decode", str(log), "--dbc", str(dbc), "-o", str(out)]) == 0
    with out.open(newline="") as handle:
        decoded = [row for row in csv.DictReader(handle) if row["signal"] == "Speed"]
    # (monitor prints 10 significant digits)
    assert [float(line.split()[3]) for line in speed] == pytest.approx(
        [float(row["value"]) for row in decoded]
    )


def test_monitor_on_a_terminal_redraws_a_table_in_place(tmp_path: Path) -> None:
    dbc = tmp_path / "m.dbc"
    dbc.write_text(DBC)
    log = _log(tmp_path)
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tcu.cli.main", "monitor", str(log), "--dbc", str(dbc), "--rate", "2",
             "--refresh-s", "0.1", "--signal", "Dyn.G*"],
            stdout=follower,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip
        os.close(follower)
        follower = -1
        screen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == 0, proc.stderr
    text = screen.decode()
    redraws = text.count("\x1b[H\x1b[J")
    assert redraws >= 3, text  # about 0.5 s at 0.1 s per redraw, and the final one
    last = text.rsplit("\x1b[H\x1b[J", 1)[1]
    assert "frames 100" in last and "(ended)" in last
    assert "Dyn.Gear" in last and "D (3)" in last and "Dyn.Speed" not in last  # --signal Dyn.G*


def test_monitor_of_a_live_virtual_bus(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    dbc = tmp_path / "m.dbc"
    dbc.write_text(DBC)
    channel = f"monitor-{os.getpid()}"
    codes: list[int] = []
    runner = threading.Thread(
        target=lambda: codes.append(
            main(["monitor", "-i", "virtual", "-c", channel, "--dbc", str(dbc), "--count", "3"])
        )
    )
    runner.start()
    time.sleep(0.5)  # the monitor's bus is open
    sender = can.Bus(interface="virtual", channel=channel)
    try:
        for speed, gear in ((1234, 3), (1234, 3), (2000, 0)):
            data = speed.to_bytes(2, "little") + bytes(2) + bytes([gear]) + bytes(3)
            sender.send(can.Message(arbitration_id=0x100, is_extended_id=False, data=data))
            time.sleep(0.1)
    finally:
        sender.shutdown()
    runner.join(20)
    assert codes == [0]
    lines = [line.split(" ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        f"{channel} Dyn.Speed 12.34 km/h",
        f"{channel} Dyn.Gear D (3)",
        f"{channel} Dyn.Speed 20 km/h",
        f"{channel} Dyn.Gear P (0)",
    ]
