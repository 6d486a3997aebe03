"""tools/bench/agent_load.py end to end on a small load: every frame sent is read and stored."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench" / "agent_load.py"


def test_agent_load_bench_small_run() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--seconds",
            "2",
            "--warmup",
            "1",
            "--buses",
            "2",
            "--load",
            "0.25",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rate = 0.25 * 500_000 / 111
    assert result["rate_fps_total"] == round(2 * rate, 1)
    assert result["frames_sent"] == 2 * round(rate * 3)
    assert result["frames_read"] == result["frames_sent"] and result["dropped"] == 0
    assert result["unknown_frames"] == 0 and result["batches_unacked"] == 0
    assert 0 < result["samples_stored"] == result["samples_collected"]
    assert 0 < result["cpu_share"] < 2.0
    assert 1.9 < result["steady_s"] < 10
