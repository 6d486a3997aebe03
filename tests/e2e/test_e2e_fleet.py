"""`tcu demo --scenario fleet --json`: the border drive on a 3-node NATS cluster, two replicas, a
durable command. 2 to 4 minutes on the 2-core machine (206 s in one run), so not in the default run:
``pytest -m slow tests/e2e/test_e2e_fleet.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_fleet_demo_moves_between_replicas_loses_nothing_and_runs_the_offline_command(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("2 to 4 minutes: run with -m slow")
    result = subprocess.run(
        [sys.executable, "-m", "tcu.cli.main", "demo", "--scenario", "fleet", "--json"],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["scenario"] == "fleet"
    assert summary["samples_lost"] == summary["samples_unexpected"] == summary["value_errors"] == 0
    assert summary["samples_stored"] == summary["samples_expected"] > 0
    assert min(summary["handover_connections"]) >= 1 and summary["handover_moves"] >= 2
    assert summary["command_while_offline"] == "QUEUED"
    assert summary["command_after_drive"] == "EXECUTED"
    assert summary["campaigns"] == ["fleet_demo_watch v1"]
