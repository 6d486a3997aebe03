"""``tcu agent`` as a real process: a missing CAN bus or an unreachable ingest does not end it,
SIGTERM ends it within its documented bound, and no traceback reaches the user without ``--debug``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_config(
    tmp_path: Path, small_dbc: Path, small_mapping: Path, *, port: int, drain_s: float, missing_bus: bool
) -> Path:
    other_dbc = tmp_path / "other.dbc"
    other_dbc.write_text('VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: ECU\n\nBO_ 768 Other: 8 ECU\n')
    missing = textwrap.dedent(
        f"""
        [[bus]]
        name = "can1"
        interface = "socketcan"
        channel = "tcunope0"
        dbc = ["{other_dbc}"]
        retry_initial_s = 0.1
        retry_max_s = 0.5
        """
    )
    path = tmp_path / "agent.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [vehicle]
            id = "WTCUCLI0000000001"

            [[bus]]
            name = "can0"
            interface = "virtual"
            channel = "tcu-cli-{os.getpid()}"
            dbc = ["{small_dbc}"]
            {{missing}}
            [signals]
            mapping = "{small_mapping}"

            [uplink]
            target = "127.0.0.1:{port}"
            insecure = true
            connect_timeout_s = 1
            backoff_initial_s = 0.1
            backoff_max_s = 0.5
            drain_timeout_s = {drain_s}
            """
        ).replace("{missing}", missing if missing_bus else "")
    )
    return path


def _start(config: Path, *extra: str) -> subprocess.Popen[str]:
    """``tcu agent --config CONFIG [extra agent options]``."""
    return subprocess.Popen(
        [sys.executable, "-m", "tcu.cli.main", "agent", "--config", str(config), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _wait_for_line(proc: subprocess.Popen[str], needles: list[str], timeout_s: float = 30.0) -> list[str]:
    """Read stderr until every needle was seen (or fail); return the lines read."""
    assert proc.stderr is not None
    lines: list[str] = []
    missing = list(needles)
    deadline = time.monotonic() + timeout_s
    os.set_blocking(proc.stderr.fileno(), False)
    while missing:
        assert time.monotonic() < deadline, f"not seen {missing} in {lines}"
        assert proc.poll() is None, f"agent ended ({proc.returncode}): {lines + proc.stderr.readlines()}"
        line = proc.stderr.readline()
        if not line:
            time.sleep(0.05)
            continue
        lines.append(line)
        missing = [n for n in missing if n not in line]
    return lines


def _stop(proc: subprocess.Popen[str], seen: list[str]) -> tuple[str, str, float]:
    """SIGTERM; (stdout, all of stderr, seconds until it exited)."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    return out, "".join(seen) + err, time.monotonic() - sent


def test_a_missing_bus_is_retried_and_the_agent_runs_until_sigterm_without_a_traceback(
    tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    config = _write_config(
        tmp_path, small_dbc, small_mapping, port=_closed_port(), drain_s=1.0, missing_bus=True
    )
    proc = _start(config)
    try:
        seen = _wait_for_line(proc, ["bus can0: opened", "bus can1: down:"])
        time.sleep(1.0)  # a few more attempts
        assert proc.poll() is None
        out, stderr, _took = _stop(proc, seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert sum("bus can1: down:" in line for line in stderr.splitlines()) == 1, stderr
    final = json.loads(out.strip().splitlines()[-1])
    assert final["event"] == "stopped" and final["bus_open_failures"] >= 2, out


def test_an_unreachable_ingest_is_logged_and_sigterm_stops_the_agent_within_its_bound(
    tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    drain_s = 1.0
    config = _write_config(
        tmp_path, small_dbc, small_mapping, port=_closed_port(), drain_s=drain_s, missing_bus=False
    )
    # The bus replays a 20 s log in real time, so batches pile up unacked and the drain waits.
    log = tmp_path / "drive.log"
    t0 = 1_763_800_000.0
    log.write_text("".join(f"({t0 + i / 100:.6f}) can0 100#1027000003000000\n" for i in range(2000)))
    text = config.read_text()
    text = text.replace('interface = "virtual"', 'interface = "replay"')
    text = text.replace(f'channel = "tcu-cli-{os.getpid()}"', f'channel = "{log}"')
    config.write_text(text + "\n[batch]\nmax_age_ms = 100\n")
    stats = tmp_path / "stats.json"
    proc = _start(config, "--stats-file", str(stats))
    try:
        seen = _wait_for_line(proc, ["uplink: connecting to", "uplink: cannot connect to"])
        deadline = time.monotonic() + 20
        while not (stats.exists() and json.loads(stats.read_text() or "{}").get("batches_unacked", 0) >= 3):
            assert time.monotonic() < deadline and proc.poll() is None, seen
            time.sleep(0.1)
        out, stderr, took = _stop(proc, seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    final = json.loads(out.strip().splitlines()[-1])
    assert final["event"] == "stopped" and final["batches_unacked"] >= 3, out
    assert "still unacked at shutdown" in stderr
    print(f"SIGTERM to exit: {took:.2f} s (drain_timeout_s {drain_s})")
    # The documented bound: uplink.drain_timeout_s plus at most 5 s to close buses and flush.
    assert took < drain_s + 5.0, (took, stderr)
    reasons = [line for line in stderr.splitlines() if "uplink: cannot connect to" in line]
    assert reasons and "retrying in" in reasons[0], reasons


def test_no_traceback_without_debug_anywhere_in_the_cli(tmp_path: Path) -> None:
    """A bug (not a TcuError) in a subcommand, a logged exception and a failing thread: one line each."""
    script = textwrap.dedent(
        """
        import logging, sys, threading
        import tcu.cli.agent as agent
        from tcu.cli import main as m
        from tcu.errors import BusError

        def run(args):
            try:
                raise ValueError("logged")
            except ValueError:
                logging.getLogger("tcu.x").exception("something failed")
            t = threading.Thread(target=lambda: 1 / 0, name="worker")
            t.start(); t.join()
            raise ExceptionGroup("tasks", [BusError("bus 'can0': cannot open"), RuntimeError("boom")])

        agent.run = run
        sys.exit(m.main(sys.argv[1:]))
        """
    )
    runs = {}
    for name, extra in [("plain", []), ("debug", ["--debug"])]:
        proc = subprocess.run(
            [sys.executable, "-c", script, *extra, "agent", "--config", str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        runs[name] = proc
    plain = runs["plain"]
    assert plain.returncode == 70, plain.stderr
    assert "Traceback" not in plain.stderr, plain.stderr
    assert (
        "tcu agent: internal error: RuntimeError: boom (run with --debug for the traceback)" in plain.stderr
    )
    assert "something failed [ValueError: logged; run with --debug for the traceback]" in plain.stderr
    assert "thread worker ended with an exception [ZeroDivisionError" in plain.stderr
    # Each error of a task group's ExceptionGroup: ours as an error, the bug as an internal one.
    assert "tcu agent: error: bus 'can0': cannot open" in plain.stderr
    debug = runs["debug"]
    assert debug.returncode != 0 and debug.stderr.count("Traceback") >= 3, debug.stderr


def test_a_config_error_is_one_line_and_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[vehicle]\nid = "V"\nidd = 1\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tcu.cli.main",
            "agent",
            "--config",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"tcu agent: error: {path}: vehicle.idd: unknown key (did you mean 'id'?); known keys: id"
    ]
