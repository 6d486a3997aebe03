"""``python -m sim`` end to end: JSON on stdout, socketcand client, ground truth, SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import can

from sim import DEFAULT_DBC_PATH, DEFAULT_MAPPING_PATH, load_ground_truth

ROOT = Path(__file__).resolve().parents[2]


def test_cli_drive_over_socketcand(tmp_path: Path) -> None:
    gt_path = tmp_path / "truth.npz"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim", "--duration", "3", "--speed", "max", "--seed", "12",
         "--ground-truth", str(gt_path), "--start-epoch-us", "1767261600000000", "--channel", "can1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    bus = None
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready == {
            "event": "ready",
            "host": "127.0.0.1",
            "port": ready["port"],
            "channel": "can1",
            "dbc": str(DEFAULT_DBC_PATH),
            "mapping": str(DEFAULT_MAPPING_PATH),
        }
        assert ready["port"] > 0
        bus = can.Bus(interface="socketcand", host="127.0.0.1", port=ready["port"], channel="can1")
        done = json.loads(proc.stdout.readline())
        assert done == {
            "event": "done",
            "frames": 1260,
            "ground_truth": str(gt_path),
            "start_us": 1_767_261_600_000_000,
            "end_us": done["end_us"],
            "interrupted": False,
        }
        got: list[can.Message] = []
        while len(got) < done["frames"]:
            msg = bus.recv(5.0)
            assert msg is not None, f"timed out after {len(got)} frames"
            got.append(msg)
        gt = load_ground_truth(gt_path)
        assert gt.frames == 1260 and gt.end_us == done["end_us"] < 1_767_261_603_000_000
        assert [round(m.timestamp * 1e6) for m in got] == gt.frame_t_us.tolist()
        assert [m.arbitration_id for m in got] == gt.frame_arbitration_id.tolist()
        assert proc.poll() is None  # stays up after the drive
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert out == ""  # nothing but the two JSON lines on stdout
        assert "drove 1260 frames" in err
    finally:
        if bus is not None:
            bus.shutdown()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_cli_exits_cleanly_on_sigterm_before_a_client() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim", "--duration", "1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["event"] == "ready"
        proc.send_signal(signal.SIGTERM)
        out, _err = proc.communicate(timeout=10)
        assert proc.returncode == 0 and out == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_cli_rejects_a_bad_speed() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sim", "--speed", "fast"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert "--speed must be 'max' or a positive number" in proc.stderr


def test_cli_reports_a_client_that_goes_away(tmp_path: Path) -> None:
    gt_path = tmp_path / "partial.npz"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim", "--duration", "600", "--speed", "max", "--ground-truth", str(gt_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())["port"]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert sock.recv(256) == b"< hi >"
            sock.sendall(b"< open can0 >")
            assert sock.recv(256) == b"< ok >"
            sock.sendall(b"< rawmode >")
            assert sock.recv(256) == b"< ok >"
            assert sock.recv(1024).strip().startswith(b"< frame ")
        done = json.loads(proc.stdout.readline())
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 1 and out == ""
        assert done["event"] == "done" and done["interrupted"] is True
        assert 0 < done["frames"] < 600 * 420
        assert load_ground_truth(gt_path).frames == done["frames"]
        assert "socketcand client went away" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_cli_sigterm_while_blocked_on_a_slow_client(tmp_path: Path) -> None:
    gt_path = tmp_path / "stopped.npz"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim", "--duration", "600", "--speed", "max", "--ground-truth", str(gt_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())["port"]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert sock.recv(256) == b"< hi >"
            sock.sendall(b"< open can0 >")
            assert sock.recv(256) == b"< ok >"
            sock.sendall(b"< rawmode >")
            assert sock.recv(256) == b"< ok >"
            time.sleep(1.0)  # never read: flow control blocks the simulator in sendall
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
            done = json.loads(proc.stdout.readline())
            out, _err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and out == ""
        assert done["interrupted"] is True
        assert 0 < done["frames"] < 600 * 420  # stopped long before the end
        assert load_ground_truth(gt_path).frames == done["frames"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
