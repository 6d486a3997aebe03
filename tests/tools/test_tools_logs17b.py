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


_ASC = """date Fri Dec 04 03:34:21.878 am 2026
base hex  timestamps absolute
internal events logged
// version 9.0.0
Begin Triggerblock Fri Dec 04 03:34:21.878 am 2026
   0.000000 Start of measurement
   0.010000 1  3E8             Rx   d 2 01 02  Length = 0 BitCount = 0 ID = 1000
   0.020000 2  3E8             Rx   d 2 03 04  Length = 0 BitCount = 0 ID = 1000
End TriggerBlock
"""


def test_asc_absolute_time_base_is_kept(tmp_path: Path) -> None:
    from datetime import datetime

    from tcu.can.logs import open_log

    path = tmp_path / "abs.asc"
    path.write_text(_ASC)
    reader = open_log(path)
    t_ns = [int(t) for chunk in reader for t in chunk.t_ns]
    start = datetime(2026, 12, 4, 3, 34, 21, 878000).timestamp()  # the header's (local) time
    assert [round(t / 1e9 - start, 6) for t in t_ns] == [0.01, 0.02]
    assert reader.stats.implausible_times == 0


_TRC_V10 = """;##########################################################################
;   Start time: 04.12.2026 03:34:21.878
;   Message Number
;   |         Time Offset (ms)
;   |         |       ID (hex)
;   |         |       |     Data Length
;   |         |       |     |   Data Bytes (hex) ...
;---+--   ----+----  ----  +  -- -- -- --
     1)         0.0  0300  2  01 02
     2)        10.0  0300  2  03 04
"""


def test_log_dated_1970_is_counted_and_refused_with_strict_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tcu.can.logs import open_log

    path = tmp_path / "v10.trc"  # TRC 1.0 has no absolute start time: python-can dates it 1970
    path.write_text(_TRC_V10)
    reader = open_log(path)
    assert sum(len(chunk) for chunk in reader) == 2
    assert reader.stats.implausible_times == 2
    out = tmp_path / "out.csv"
    assert main(["decode", str(path), "--dbc", str(PT_DBC), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "2 frames dated before 2000 or in the future" in err
    assert out.exists()
    out.unlink()
    assert main(["decode", str(path), "--dbc", str(PT_DBC), "-o", str(out), "--strict-time"]) != 0
    assert "dated before 2000" in capsys.readouterr().err
    assert not out.exists()


def _rav4_as_numbered_channels(tmp_path: Path) -> Path:
    """The RAV4 head with channels named as ASC and BLF name them: 0 and 1."""
    text = _head(3000).replace(b") can0 ", b") 0 ").replace(b") can1 ", b") 1 ")
    path = tmp_path / "numbered.log"
    path.write_bytes(text)
    return path


def test_channel_dbc_matching_nothing_names_the_log_channels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _rav4_as_numbered_channels(tmp_path)
    out = tmp_path / "out.csv"
    code = main(["decode", str(path), "--dbc", f"can0={PT_DBC}", "--dbc", f"can1={ADAS_DBC}", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0
    assert "no frame on channel can0" in err and "no frame on channel can1" in err
    assert "the log's channels: 0, 1" in err
    assert "--channel 0=can0" in err


def test_channel_aliases_rename_log_channels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "head.log"
    source.write_bytes(_head(3000))
    dbcs = ["--dbc", f"can0={PT_DBC}", "--dbc", f"can1={ADAS_DBC}"]
    want = tmp_path / "want.csv"
    assert main(["decode", str(source), *dbcs, "-o", str(want)]) == 0
    got = tmp_path / "got.csv"
    numbered = _rav4_as_numbered_channels(tmp_path)
    aliases = ["--channel", "0=can0", "--channel", "1=can1"]
    assert main(["decode", str(numbered), *dbcs, *aliases, "-o", str(got)]) == 0
    assert "no frame on channel" not in capsys.readouterr().err
    assert got.read_bytes() == want.read_bytes()


def test_bad_channel_alias_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", str(RAV4), "--dbc", str(PT_DBC), "--channel", "0"]) != 0
    assert "--channel '0'" in capsys.readouterr().err
