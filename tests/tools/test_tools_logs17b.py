"""Field tools on logs: decode from stdin, absolute ASC/TRC time bases, the channel hint."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tcu.cli.main import main
from tools.shared_data import shared_path

RAV4 = shared_path("can/logs/comma2k19_rav4_2017_seg40.log")
PT_DBC = shared_path("can/dbc/toyota_new_mc_pt_flattened.dbc")
ADAS_DBC = shared_path("can/dbc/toyota_adas.dbc")


def _head(lines: int) -> bytes:
    with RAV4.open("rb") as handle:
        return b"".join(next(handle) for _ in range(lines))


def test_decode_dash_reads_candump_from_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _head(3000)
    source = tmp_path / "head.log"
    source.write_bytes(text)
    from_file = tmp_path / "file.csv"
    dbcs = ["--dbc", f"can0={PT_DBC}", "--dbc", f"can1={ADAS_DBC}"]
    assert main(["decode", str(source), *dbcs, "-o", str(from_file)]) == 0
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text)))
    from_stdin = tmp_path / "stdin.csv"
    assert main(["decode", "-", *dbcs, "-o", str(from_stdin)]) == 0
    assert "frames 3000" in capsys.readouterr().err
    assert from_stdin.read_bytes() == from_file.read_bytes()
    assert from_file.read_bytes().count(b"\n") > 1000


def test_decode_dash_refuses_a_binary_log_format(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"")))
    code = main(["decode", "-", "--log-format", "blf", "--dbc", str(PT_DBC)])
    assert code != 0
    assert "stdin" in capsys.readouterr().err
