"""`tcu demo --scenario v2n`: seven agents on a real Mosquitto warn each other as the ground truth says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/usr/sbin/mosquitto").exists(), reason="mosquitto is not installed")


@pytest.mark.slow  # a 14 s drive at real time after seven agents started
def test_every_vehicle_that_must_be_warned_is_warned_once_and_no_other(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tcu.cli.main",
            "demo",
            "--scenario",
            "v2n",
            "--json",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["scenario"] == "v2n"
    assert summary["vehicles"] == 7
    assert summary["v2n_events"] == ["leader/eebl/1", "leader/stationary/1"]
    # The ground truth (sim.v2n, geometry alone): EEBL reaches the two closest followers, the stationary
    # leader all three; never the car ahead, the one 5 km behind or the oncoming one.
    assert summary["must_warn"] == {
        "leader/eebl/1": ["follower-150", "follower-50"],
        "leader/stationary/1": ["follower-150", "follower-50", "follower-700"],
    }
    assert summary["warnings_ok"] == summary["warnings_expected"] == 5
    assert summary["warnings_unexpected"] == 0
    assert summary["cancellations_ok"] == summary["cancellations_expected"] == 5
    assert summary["scenario_problems"] == []
    # The latencies are measured (their size depends on the machine: not asserted).
    assert summary["publish_ms"]["n"] == 2
    assert summary["accept_ms"]["n"] == 5
    # Telemetry went on beside V2N and lost nothing.
    assert summary["samples_lost"] == 0
    assert summary["samples_stored"] == summary["samples_expected"] > 0
