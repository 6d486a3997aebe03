"""``tcu decode`` / ``tcu plot`` refuse a file that is not a log of its format (issue 10, item 13).

A binary file named ``.asc`` used to end with "file truncated: stopped at frame 0" and exit 0.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tcu.cli.main import main
from tools.shared_data import shared_path

BLF = shared_path("can/logs/test_CanFdMessage.blf")
DBC = shared_path("can/dbc/toyota_adas.dbc")
SIGNAL = "RADAR_STATUS"  # a signal of that DBC


@pytest.mark.parametrize("suffix", [".asc", ".trc", ".log"])
def test_decode_of_a_binary_file_with_a_text_log_suffix_fails_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    log = tmp_path / f"binary{suffix}"
    log.write_bytes(BLF.read_bytes())
    out = tmp_path / "out.csv"
    assert main(["decode", str(log), "--dbc", str(DBC), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("tcu: error:") or "error" in line)
    assert str(log) in line
    assert "no CAN frame could be read" in line
    assert not out.exists()  # no header-only CSV left behind


def test_plot_of_a_binary_asc_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    log = tmp_path / "binary.asc"
    log.write_bytes(BLF.read_bytes())
    args = ["plot", str(log), "--dbc", str(DBC), "--signal", SIGNAL, "-o", str(tmp_path / "p.png")]
    assert main(args) == 1
    assert "no CAN frame could be read" in capsys.readouterr().err


def test_decode_of_an_empty_log_is_not_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "empty.log"
    log.write_bytes(b"")
    assert main(["decode", str(log), "--dbc", str(DBC), "-o", str(tmp_path / "out.csv")]) == 0
    assert "frames 0" in capsys.readouterr().err
