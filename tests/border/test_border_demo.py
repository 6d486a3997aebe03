"""`tcu demo --scenario border --json` as a user runs it, then `tcu esim audit verify` on its log."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_border_demo_switches_rolls_back_once_downloads_once_and_loses_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tcu.cli.main", "demo", "--scenario", "border", "--json"],
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["scenario"] == "border"
    assert summary["profile_switches"] == 2
    assert summary["switched_to"] == ["lu-post", "de-ts48"]
    # Germany: the card held no profile; the policy downloaded one from osmo-smdpp and attached on it
    assert summary["profiles_downloaded"] == 1
    assert summary["downloaded"] == ["de-ts48"] and summary["download_failures"] == []
    assert summary["download_events_stored"] == 1
    assert summary["notifications_pending"] == 0 and summary["notifications_delivered"] >= 3
    assert summary["rollbacks"] == 1
    assert summary["rolled_back_to"] == ["fr-orange"]
    assert summary["samples_lost"] == 0
    assert summary["samples_stored"] == summary["samples_expected"] > 0
    # the events also reached the ingest as telemetry
    assert summary["switch_events_stored"] == 2
    assert summary["rollback_events_stored"] == 1
    # the uplink went through the simulated cellular data path, which really went down
    # (tunnel, profile switches, the failed attach), and everything spooled was delivered
    assert summary["link_outages"] >= 2
    assert summary["link_connections_cut"] >= 1
    assert summary["link_connections"] > summary["link_connections_cut"]
    assert summary["batches_unacked"] == 0
    assert summary["scenario_problems"] == []
    audit_log = Path(summary["audit_log"])
    try:
        assert audit_log.is_file(), "with --json the work directory is kept"
        verify = subprocess.run(
            [sys.executable, "-m", "tcu.cli.main", "esim", "audit", "verify", str(audit_log)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        lines = audit_log.read_text().splitlines()
        assert [json.loads(x)["decision"] for x in lines if '"kind":"decision"' in x] == [
            "switch",
            "rollback",
            "download",
        ]
        kinds = {json.loads(x)["kind"] for x in lines}
        assert {"download", "es9", "notification", "notifications"} <= kinds
        # the same command refuses the log once one entry is edited
        tampered = tmp_path / "tampered.jsonl"
        lines[3] = lines[3].replace('"kind":', '"kind": ', 1)
        tampered.write_text("\n".join(lines) + "\n")
        refused = subprocess.run(
            [sys.executable, "-m", "tcu.cli.main", "esim", "audit", "verify", str(tampered)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode != 0
    finally:
        workdir = summary.get("workdir")
        if workdir and Path(workdir).name.startswith("tcu-demo-"):
            shutil.rmtree(workdir, ignore_errors=True)
