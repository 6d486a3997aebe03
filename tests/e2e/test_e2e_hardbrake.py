"""`tcu demo --scenario hard-brake`: one event per braking, exact windows and raw frames."""

from __future__ import annotations

import json
import subprocess
import sys


def test_every_hard_braking_is_captured_with_its_exact_window() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tcu.cli.main", "demo", "--scenario", "hard-brake", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["scenario"] == "hard-brake"
    assert summary["events_expected"] == 3  # the simulator brakes hard three times
    assert summary["events_captured"] == 3
    assert summary["window_errors"] == 0
    assert summary["events_unexpected"] == 0
    # Each event carries exactly the raw ESP_Speed frames the simulator sent in its window.
    assert summary["frame_errors"] == 0
    assert summary["frames_captured"] > 0
    # The periodic campaign ran beside it and lost nothing.
    assert summary["samples_lost"] == 0
    assert summary["samples_stored"] == summary["samples_expected"] > 0
