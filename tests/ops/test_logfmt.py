"""``--log-format json`` and the journald-friendly output under systemd ($JOURNAL_STREAM)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tcu.logfmt import JsonFormatter, TextFormatter, journal_stream


def _record(msg: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("tcu.test", level, __file__, 1, msg, (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_lines_have_stable_keys_extras_and_one_line_exceptions() -> None:
    line = JsonFormatter().format(
        _record("bus can0: down", logging.WARNING, bus="can0", attempt=3, path=Path("/x"))
    )
    obj = json.loads(line)
    assert list(obj)[:4] == ["ts", "level", "logger", "msg"]
    assert obj["level"] == "WARNING" and obj["logger"] == "tcu.test" and obj["msg"] == "bus can0: down"
    assert obj["ts"].endswith("Z") and obj["bus"] == "can0" and obj["attempt"] == 3 and obj["path"] == "/x"
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = _record("failed", logging.ERROR)
        record.exc_info = sys.exc_info()
    text = JsonFormatter().format(record)
    assert "\n" not in text and json.loads(text)["exc"] == "ValueError: bad\nthing"
    assert "traceback" not in json.loads(text)
    assert "Traceback" in json.loads(JsonFormatter(debug=True).format(record))["traceback"]
    assert "Traceback" not in TextFormatter().format(record)


def test_journal_lines_carry_priorities_and_no_timestamp(tmp_path: Path) -> None:
    text = TextFormatter(journal=True)
    assert text.format(_record("up")) == "<6>INFO    tcu.test: up"
    assert text.format(_record("down", logging.ERROR)).startswith("<3>ERROR")
    assert text.format(_record("full", logging.WARNING)).startswith("<4>")
    assert JsonFormatter(journal=True).format(_record("x", logging.DEBUG)).startswith('<7>{"ts":')
    with (tmp_path / "f").open("w") as fh:
        st = os.fstat(fh.fileno())
        assert journal_stream({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, fh)
        assert not journal_stream({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, fh)  # another stream
        assert not journal_stream({}, fh)


def _run_ingest(tmp_path: Path, *global_args: str) -> list[str]:
    """``tcu [global_args] ingest --insecure`` until it listens, then SIGTERM; its stderr lines."""
    err = tmp_path / "stderr.log"
    port_file = tmp_path / "port"
    port_file.unlink(missing_ok=True)
    with err.open("w") as fh:
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tcu.cli.main",
                *global_args,
                "ingest",
                "--insecure",
                "--listen",
                "127.0.0.1:0",
                "--db",
                str(tmp_path / "i.db"),
                "--port-file",
                str(port_file),
            ],
            stderr=fh,
            stdout=subprocess.DEVNULL,
            env=env,
        )
        try:
            deadline = time.monotonic() + 30
            while not port_file.exists():
                assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    return err.read_text().splitlines()


def test_the_ingest_logs_json_lines(tmp_path: Path) -> None:
    lines = _run_ingest(tmp_path, "--log-format", "json")
    logged = [json.loads(line) for line in lines if line.startswith("{")]
    assert any(o["logger"] == "tcu.ingest.server" and "listening on" in o["msg"] for o in logged), lines
    assert any(o["level"] == "WARNING" and "insecure" in o["msg"] for o in logged)
    assert all(set(o) >= {"ts", "level", "logger", "msg"} for o in logged)
    others = [line for line in lines if not line.startswith("{")]
    assert all(line.startswith("tcu ingest: listening") for line in others), others  # the CLI's own line


def test_configure_logging_under_journald(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tcu.cli.main import configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    with (tmp_path / "stderr").open("w") as fh:
        st = os.fstat(fh.fileno())
        monkeypatch.setattr(sys, "stderr", fh)
        root.handlers = []
        try:
            configure_logging("INFO", False, "text", env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
            logging.getLogger("tcu.ingest.server").info("ingest listening")
            logging.getLogger("tcu.cli.ingest").warning("insecure mode")
        finally:
            root.handlers, _ = saved
            root.setLevel(saved[1])
    lines = (tmp_path / "stderr").read_text().splitlines()
    assert lines == [
        "<6>INFO    tcu.ingest.server: ingest listening",
        "<4>WARNING tcu.cli.ingest: insecure mode",
    ]
