"""Progress on long work: a bar on stderr when it is a terminal, nothing when it is piped."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tools.shared_data import shared_path

RAV4 = shared_path("can/logs/comma2k19_rav4_2017_seg40.log")
PT_DBC = shared_path("can/dbc/toyota_new_mc_pt_flattened.dbc")


def _run(args: list[str], *, tty: bool) -> tuple[int, str]:
    """Run ``tcu ARGS`` with stderr on a pty (``tty``) or a pipe; (exit code, stderr)."""
    cmd = [sys.executable, "-m", "tcu.cli.main", *args]
    if not tty:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        return proc.returncode, proc.stderr
    leader, follower = pty.openpty()
    try:
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=follower)
        os.close(follower)
        follower = -1
        out = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        code = child.wait(timeout=120)
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    return code, out.decode(errors="replace")


@pytest.mark.parametrize("command", ["decode", "plot"])
def test_a_progress_bar_on_a_terminal_and_none_when_piped(tmp_path: Path, command: str) -> None:
    if command == "plot":
        pytest.importorskip("matplotlib")
        extra = ["--signal", "WHEEL_SPEEDS.WHEEL_SPEED_FL", "-o", str(tmp_path / "p.png")]
    else:
        extra = ["-o", str(tmp_path / "d.csv")]
    args = [command, str(RAV4), "--dbc", f"can0={PT_DBC}", *extra]
    code, on_tty = _run(args, tty=True)
    assert code == 0, on_tty
    # e.g. "\r[##########..........]  48%  65,536 frames (212,345/s)  decode .../comma2k19_rav4_..."
    bars = re.findall(r"\r\[[#.]{20}\] +(\d+)%  [\d,]+ frames \([\d,]+/s\)  decode ", on_tty)
    assert bars and int(bars[-1]) > 0, on_tty
    code, piped = _run(args, tty=False)
    assert code == 0, piped
    assert "\r" not in piped and "[#" not in piped and " frames (" not in piped, piped
    assert f"tcu {command}: frames 135468" in piped  # the summary is still there
