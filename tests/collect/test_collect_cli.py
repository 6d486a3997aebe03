"""``tcu campaign check`` on real files: report, and FILE:LINE:COL errors with exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tcu.cli.main import main

DBC = """VERSION ""

NS_ :

BS_:

BU_: ECU TCU

BO_ 256 Dyn: 8 ECU
 SG_ Speed : 0|16@1+ (0.01,0) [0|655.35] "km/h" TCU
 SG_ Accel : 16|16@1- (0.001,0) [-32|32] "m/s^2" TCU

BO_ 512 Slow: 8 ECU
 SG_ Soc : 0|8@1+ (0.5,0) [0|100] "%" TCU

BA_DEF_ BO_ "GenMsgCycleTime" INT 0 10000;
BA_DEF_DEF_ "GenMsgCycleTime" 0;
BA_ "GenMsgCycleTime" BO_ 256 10;
BA_ "GenMsgCycleTime" BO_ 512 1000;
"""

MAPPING = """version = 1

[[signal]]
name = "Vehicle.Speed"
message = "Dyn"
signal = "Speed"
period_ms = 100

[[signal]]
name = "Vehicle.Acceleration.Longitudinal"
message = "Dyn"
signal = "Accel"
period_ms = 100

[[signal]]
name = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
message = "Slow"
signal = "Soc"
period_ms = 1000
"""

CAMPAIGNS = """\
[[campaign]]
name = "hard_braking"
version = 1
priority = 50
signals = ["Vehicle.Speed"]
[campaign.condition]
expression = "Vehicle.Acceleration.Longitudinal < -6 and Vehicle.Speed > 30"
pre_trigger_ms = 10000
post_trigger_ms = 5000

[[campaign]]
name = "minutely"
version = 1
signals = ["Vehicle.Speed", "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"]
periodic = {period_ms = 60000}
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, Path]:
    dbc, mapping, campaigns = tmp_path / "v.dbc", tmp_path / "v_vss.toml", tmp_path / "c.toml"
    dbc.write_text(DBC)
    mapping.write_text(MAPPING)
    campaigns.write_text(CAMPAIGNS)
    return dbc, mapping, campaigns


def test_collect_cli_check_reports_cost_and_memory(
    files: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    dbc, mapping, campaigns = files
    code = main(["campaign", "check", str(campaigns), "--dbc", f"can0={dbc}", "--mapping", str(mapping)])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].startswith(f"{campaigns}:1: hard_braking v1 priority 50: condition rising_edge")
    assert "cost: 7 nodes, depth 3, 0 window(s) totalling 0 ms, reads 2 signal(s)" in out[0]
    # Speed at 100 Hz (10 ms cycle) for 10 s: ceil(10*100*1.1)+2 = 1102 samples; accel: 2 samples.
    assert out[0].endswith("; buffers 17664 bytes")
    assert out[1].startswith(f"{campaigns}:11: minutely v1 priority 0: periodic (60000 ms), 2 signal(s)")
    assert (
        out[2] == "2 campaign(s) OK; ring buffers 17664 bytes (1104 samples x 16 B, 2 signals) "
        "of a 16777216 byte budget"
    )


def test_collect_cli_check_without_catalog(
    files: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["campaign", "check", str(files[2])])
    assert code == 0
    assert "signal names and buffer memory not checked" in capsys.readouterr().out


def test_collect_cli_errors_file_line_col(
    files: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    dbc, mapping, campaigns = files
    campaigns.write_text(CAMPAIGNS.replace("Vehicle.Speed > 30", "Vehicle.Speed >> 30"))
    code = main(["campaign", "check", str(campaigns)])
    err = capsys.readouterr().err
    assert code == 1
    col = CAMPAIGNS.splitlines()[6].index("> 30") + 2
    assert err.startswith(f"{campaigns}:7:{col}: campaign 'hard_braking' condition: expression: ")
    # Unknown signal only shows with the catalog.
    campaigns.write_text(CAMPAIGNS.replace("Vehicle.Speed > 30", "Vehicle.Sped > 30"))
    assert main(["campaign", "check", str(campaigns)]) == 0
    capsys.readouterr()
    code = main(["campaign", "check", str(campaigns), "--dbc", str(dbc), "--mapping", str(mapping)])
    err = capsys.readouterr().err
    col = CAMPAIGNS.splitlines()[6].index("Vehicle.Speed > 30") + 1
    assert code == 1
    assert err.startswith(
        f"{campaigns}:7:{col}: campaign 'hard_braking' condition expression: signal 'Vehicle.Sped'"
    )
    # Over the memory budget.
    campaigns.write_text(CAMPAIGNS)
    code = main(
        [
            "campaign",
            "check",
            str(campaigns),
            "--dbc",
            str(dbc),
            "--mapping",
            str(mapping),
            "--memory-budget-bytes",
            "1000",
        ]
    )
    assert code == 1
    assert capsys.readouterr().err.startswith(
        f"{campaigns}:1: ring buffers exceed the memory budget of 1000 bytes"
    )


def test_collect_cli_console_entry(files: tuple[Path, Path, Path]) -> None:
    bad = files[2].with_name("bad.toml")
    bad.write_text(CAMPAIGNS.replace("version = 1\npriority", "version = -1\npriority"))
    proc = subprocess.run(
        [sys.executable, "-m", "tcu.cli.main", "campaign", "check", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(
        f"{bad}:3: campaign 'hard_braking': version must be an integer >= 1"
    )
