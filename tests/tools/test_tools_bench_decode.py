"""tools/bench/decode.py checks every decoded value: it passes as is and fails on one flipped bit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench" / "decode.py"


def _run(workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(BENCH), "--only", "ford-blf", "--frames", "3000", "--rounds", "1"]
    return subprocess.run(
        [*cmd, "--workdir", str(workdir), "--json", *extra],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_decode_bench_checks_values_and_fails_on_a_corrupted_one(tmp_path: Path) -> None:
    good = _run(tmp_path)
    assert good.returncode == 0, good.stderr
    result = json.loads(good.stdout.strip().splitlines()[-1])
    ford = result["scenarios"]["ford-blf"]
    assert result["ok"] and ford["values_equal"] and ford["problems"] == []
    assert ford["counts"]["decoded"] > 2500 and ford["counts"] == ford["counts_ours"]
    assert ford["ratio"] > 0 and set(ford["ours"]) == {"min", "median", "max", "runs"}

    bad = _run(tmp_path, "--corrupt")  # the same log (kept in tmp_path), one value's lowest bit flipped
    assert bad.returncode == 1, bad.stderr
    assert "VALUES DIFFER" in bad.stderr and "1 values differ" in bad.stderr
    failed = json.loads(bad.stdout.strip().splitlines()[-1])
    assert not failed["ok"] and not failed["scenarios"]["ford-blf"]["values_equal"]
