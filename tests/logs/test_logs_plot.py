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
