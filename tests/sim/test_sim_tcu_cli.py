"""``tcu sim`` passes its arguments to ``python -m sim`` as they are, and leaves no file behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import can

ROOT = Path(__file__).resolve().parents[2]


def test_tcu_sim_takes_the_simulators_options_without_dashes_and_leaves_no_npz(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tcu.cli.main", "sim", "--duration", "1", "--speed", "max", "--seed", "3"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.communicate(timeout=30)[1]
        ready = json.loads(line)
        with can.Bus(interface="socketcand", host="127.0.0.1", port=ready["port"], channel="can0"):
            done = json.loads(proc.stdout.readline())
        proc.send_signal(signal.SIGTERM)  # it stays up after the drive
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert done["event"] == "done" and done["frames"] > 0
    assert done["ground_truth"] is None  # not asked for: not written
    assert list(tmp_path.iterdir()) == []
