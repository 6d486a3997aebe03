"""`tcu plot` writes an image of the requested signals; unknown signals are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcu.cli.main import main
from tools.shared_data import shared_path

MF4 = shared_path("can/logs/canedge_FCBF0606_00003482_00000001-60B621D9.MF4")
J1939_DBC = shared_path("can/dbc/CSS-Electronics-SAE-J1939-DEMO.dbc")


def test_plot_writes_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "truck.png"
    args = ["plot", str(MF4), "--dbc", str(J1939_DBC), "--j1939"]
    code = main([*args, "--signal", "EEC1.EngineSpeed", "--signal", "WheelBasedVehicleSpeed", "-o", str(out)])
    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000
    assert "decoded 761," in capsys.readouterr().err


def test_plot_unknown_signal_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["plot", str(MF4), "--dbc", str(J1939_DBC), "--signal", "Nope", "-o", str(tmp_path / "x.png")]
    )
    assert code == 1
    assert "'Nope': no such signal" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


DBC = """VERSION ""

NS_ :

BS_:

BU_: ECU TCU

BO_ 256 Dyn: 8 ECU
 SG_ Speed : 0|16@1+ (0.01,0) [0|655.35] "km/h" TCU
 SG_ Accel : 16|16@1- (0.001,0) [-32|32] "m/s^2" TCU
 SG_ Gear : 32|4@1+ (1,0) [0|15] "" TCU
"""


def _drive(tmp_path: Path) -> tuple[Path, Path]:
    dbc = tmp_path / "m.dbc"
    dbc.write_text(DBC)
    t0 = 1_796_000_000.0
    log = tmp_path / "drive.log"
    log.write_text(
        "".join(
            f"({t0 + i / 100:.6f}) can0 100#{((i * 10).to_bytes(2, 'little') + bytes(6)).hex().upper()}\n"
            for i in range(100)
        )
    )
    return log, dbc


def _svg(tmp_path: Path, *args: str) -> str:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text in the SVG
    log, dbc = _drive(tmp_path)
    out = tmp_path / "p.svg"
    assert main(["plot", str(log), "--dbc", str(dbc), *args, "-o", str(out)]) == 0
    return out.read_text()


def test_plot_units_globs_and_a_time_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    svg = _svg(tmp_path, "--signal", "Dyn.[SA]*", "--start", "0.2", "--end", "0.5")
    # The glob picks Speed and Accel (not Gear); each panel has its unit; 0.20 .. 0.50 s: 31 frames.
    assert "Dyn.Speed (31 samples)" in svg and "Dyn.Accel (31 samples)" in svg
    assert "Dyn.Gear" not in svg
    assert "[km/h]" in svg and "[m/s^2]" in svg
    assert "wrote" in capsys.readouterr().err


def test_plot_shared_axes_put_every_signal_on_one_panel(tmp_path: Path) -> None:
    svg = _svg(tmp_path, "--signal", "Speed", "--signal", "Dyn.Accel", "--axes", "shared")
    # one panel: a legend with both (with their units), no per-panel titles
    assert "Dyn.Speed [km/h]" in svg and "Dyn.Accel [m/s^2]" in svg
    assert "samples)" not in svg
    assert "[km/h] / [m/s^2]" in svg


def test_plot_a_glob_that_matches_nothing_names_the_closest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, dbc = _drive(tmp_path)
    code = main(["plot", str(log), "--dbc", str(dbc), "--signal", "Dyn.Sped", "-o", str(tmp_path / "x.png")])
    assert code == 1
    assert (
        "--signal 'Dyn.Sped': no such signal in the DBC files (did you mean 'Dyn.Speed'"
        in capsys.readouterr().err
    )
