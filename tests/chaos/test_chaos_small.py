"""A small chaos run in CI: real ingest, simulator and agent processes, faults on a seeded schedule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_small_chaos_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "chaos.py"),
            "--seed",
            "2",
            "--kills",
            "3",
            "--ingest-restarts",
            "1",
            "--cutoffs",
            "2",
            "--offline-minutes",
            "1",
            "--disk-full",
            "0",
            "--spool-damage",
            "0",
            "--workdir",
            str(tmp_path / "run"),
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert proc.stdout.strip(), proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and result["ok"], (result, proc.stderr[-3000:])
    assert result["durability"] == "power-loss" and result["mtls"] is True  # the defaults
    # every kind of fault happened as scheduled
    assert result["kills"] == 3
    assert result["sim_clients"] == 4  # each killed agent was replaced and read from the simulator
    assert result["ingest_restarts"] == 1
    assert result["ingest_restarts_sigterm"] + result["ingest_restarts_sigkill"] == 1
    assert result["cutoffs"] == 2 and result["connections_cut"] >= 2
    assert result["offline_periods"] == 1 and result["offline_s"] >= 55
    assert result["connections_refused"] >= 1  # the agent tried to reconnect while the link was down
    # and nothing the spool took was lost or stored twice
    assert result["samples_expected"] > 10_000
    assert result["lost"] == 0
    assert result["duplicates"] == 0
    assert result["batches_missing"] == 0 and result["batches_stored"] == result["batches_expected"] > 0
    assert result["reported_lost"] == 0 and result["batches_reported_lost"] == 0
    assert result["orphan_samples"] == 0 and result["query_mismatches"] == 0
    assert result["kills_unverified"] == 0
    assert result["value_errors"] == 0
    assert result["samples_stored"] == result["samples_expected"]
    assert result["batches_unacked_at_stop"] == 0
    assert result["unspooled_at_kills"] > 0  # kills really cut into collected data
    assert result["kill_windows_over_bound"] == 0
    assert {"kills", "ingest_restarts", "cutoffs", "offline_s", "samples_expected", "samples_stored"} <= set(
        result
    )
