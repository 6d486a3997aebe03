"""The fuzz machinery itself: hang guard, mutator, harness contracts, and run.py."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tcu.modem import at
from tools.fuzz import fuzz_es10, fuzz_modem
from tools.fuzz._common import mutate
from tools.fuzz._hypothesis import check_input
from tools.fuzz.targets import TARGETS, load

_REPO = Path(__file__).resolve().parents[2]


class _Sleeper:
    __name__ = "sleeper"

    @staticmethod
    def one_input(data: bytes) -> None:
        with contextlib.suppress(Exception):  # the guard must not be swallowed by this
            time.sleep(5)


def test_fuzz_harness_hang_guard_fails_a_slow_input():
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"more than 0\.2 s"):
        check_input(_Sleeper, b"x", limit_s=0.2)  # type: ignore[arg-type]
    assert time.monotonic() - started < 1.0


def test_fuzz_harness_mutate_ops():
    assert mutate(b"abc", []) == b"abc"
    assert mutate(b"abc", [(0, 0, 0)]) == b"`bc"  # flip bit 0 of byte 0
    assert mutate(b"abc", [(1, 1, ord("X"))]) == b"aXc"
    assert mutate(b"abc", [(2, 3, ord("d"))]) == b"abcd"
    assert mutate(b"abcdef", [(3, 1, 1)]) == b"adef"  # delete 2 bytes at 1
    assert mutate(b"abcdef", [(4, 2, 0)]) == b"ab"
    assert mutate(b"abc", [(5, 0, 1)]) == b"ababc"
    assert mutate(b"", [(0, 5, 5), (1, 5, 5), (3, 0, 0)]) == b""


def test_fuzz_harness_every_target_is_registered_and_has_seeds():
    assert sorted(TARGETS) == ["campaign", "commands", "dbc", "es10", "ingest", "logs", "modem", "v2x"]
    for name in TARGETS:
        harness = load(name)
        assert name == harness.NAME
        assert harness.seeds(), name


def test_fuzz_harness_raises_what_the_contract_forbids(monkeypatch):
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("boom")

    monkeypatch.setattr(fuzz_es10, "decode_seq", broken)
    with pytest.raises(ValueError, match="boom"):
        check_input(fuzz_es10, b"\x80\x00")


def test_fuzz_harness_modem_reports_a_reader_callback_error(monkeypatch):
    # asyncio only logs an exception raised in a reader callback; the harness must fail.
    def broken(self: at.AtChannel, line: str) -> None:
        raise KeyError(line)

    monkeypatch.setattr(at.AtChannel, "_on_line", broken)
    with pytest.raises(KeyError):
        check_input(fuzz_modem, b"OK")


def test_fuzz_harness_run_py_mutate_engine(tmp_path):
    command = [sys.executable, str(_REPO / "tools" / "fuzz" / "run.py"), "--minutes", "0.02"]
    command += ["--target", "es10", "--engine", "mutate", "--out", str(tmp_path), "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    (summary,) = json.loads(result.stdout.splitlines()[-1])
    assert summary["target"] == "es10" and summary["engine"] == "mutate"
    assert summary["executions"] > 100 and summary["crashes"] == 0
    assert len(list((tmp_path / "corpus" / "es10").iterdir())) == len(fuzz_es10.seeds())
