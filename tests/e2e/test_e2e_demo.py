"""`tcu demo` as a user runs it: three processes on loopback, summary as the last JSON line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_stores_exactly_the_expected_samples() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tcu.cli.main", "demo", "--duration", "15", "--speed", "max", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["frames"] == summary["frames_sent"] > 0
    assert summary["samples_lost"] == 0
    assert summary["value_errors"] == 0
    assert summary["samples_stored"] == summary["samples_expected"] > 0
    assert summary["distinct_signals"] >= 40
    assert summary["batches_acked"] >= 1
    assert summary["mtls"] is True  # the demo runs on a development PKI by default
    assert "result              OK: nothing lost" in result.stderr
