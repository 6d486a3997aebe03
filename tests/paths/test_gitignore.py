"""What the README's commands write into a checkout (`tcu pki init ./pki`, `[spool] directory = "spool"`)
is ignored by git, so a key or spooled telemetry cannot be committed by accident."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_pki_and_spool_directories_are_ignored() -> None:
    paths = ["pki/ca.key", "pki/vehicles/WTCUSIM0000000001.key", "spool/state.json", "ingest.sqlite"]
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert sorted(result.stdout.split()) == sorted(paths)
    # The project's own sources stay visible.
    kept = subprocess.run(
        ["git", "check-ignore", "--no-index", "tcu/pki/ca.py", "tcu/spool/__init__.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert kept.stdout == ""
