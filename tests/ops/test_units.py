"""The shipped systemd unit files: found as package data, installed by ``tcu units``, and
accepted by ``systemd-analyze verify`` (when systemd is installed; it is not booted)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tcu.systemd import SYSUSERS, UNITS, render, unit_text

ANALYZE = shutil.which("systemd-analyze")


TCU = Path(sys.executable).parent / "tcu"  # the venv's console script


def _install(dest: Path) -> list[Path]:
    out = subprocess.run(
        [sys.executable, "-m", "tcu.cli.main", "units", "--install", str(dest), "--exec", str(TCU)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"ExecStart= runs {TCU}" in out.stderr
    return [dest / name for name in UNITS]


def test_units_are_package_data_with_what_a_service_needs() -> None:
    for name in UNITS:
        text = unit_text(name)
        for line in (
            "Type=notify",
            "WatchdogSec=30",
            "Restart=on-failure",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "PrivateTmp=yes",
            "CapabilityBoundingSet=",
        ):
            assert f"\n{line}\n" in text, (name, line)
        assert "StateDirectory=" in text and "RuntimeDirectory=" in text
    assert "\nUser=tcu\n" in unit_text("tcu-agent.service")
    assert "AF_CAN" in unit_text("tcu-agent.service")
    assert "\nDynamicUser=yes\n" in unit_text("tcu-ingest.service")
    assert unit_text(SYSUSERS).startswith("# systemd-sysusers")
    assert "ExecStart=/opt/x/tcu agent" in render("tcu-agent.service", Path("/opt/x/tcu"))


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)")
def test_systemd_analyze_verify_accepts_the_installed_units(tmp_path: Path) -> None:
    assert ANALYZE is not None
    units = _install(tmp_path / "units")
    result = subprocess.run(
        [ANALYZE, "verify", *map(str, units)], capture_output=True, text=True, timeout=60, check=False
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if str(tmp_path) in line]
    assert result.returncode == 0 and problems == [], result.stdout + result.stderr

    # The check can fail: a misspelt option is reported with its unit and line.
    broken = tmp_path / "broken" / "tcu-agent.service"
    broken.parent.mkdir()
    broken.write_text(units[0].read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    result = subprocess.run(
        [ANALYZE, "verify", str(broken)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "NoNewPrivilege" in result.stdout + result.stderr
