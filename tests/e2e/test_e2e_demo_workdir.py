"""`tcu demo --workdir` with a relative path, run twice on the same directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _demo(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tcu.cli.main", "demo", "--duration", "2", "--speed", "max", "--json", *args],
        cwd=cwd,
        env=None,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.mark.slow  # two demo runs: about 25 s here
def test_relative_workdir_works_and_can_be_used_again(tmp_path: Path) -> None:
    first = _demo(tmp_path, "--workdir", "wd")
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["workdir"] == str(tmp_path / "wd")
    assert (tmp_path / "wd" / "pki" / "ca.pem").is_file() and not (tmp_path / "wd" / "wd").exists()
    again = _demo(tmp_path, "--workdir", "wd")  # the PKI and the database of the first run are there
    assert again.returncode == 0, again.stderr[-3000:]
    assert "--force" not in again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["samples_lost"] == 0
