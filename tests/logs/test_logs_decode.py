"""`tcu decode` output equals cantools' decode_message frame by frame on real logs."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import can
import cantools
import pytest

from tcu.cli.main import main
from tcu.signals.decoder import j1939_pgn
from tools.shared_data import shared_path

RAV4 = shared_path("can/logs/comma2k19_rav4_2017_seg40.log")
PT_DBC = shared_path("can/dbc/toyota_new_mc_pt_flattened.dbc")
ADAS_DBC = shared_path("can/dbc/toyota_adas.dbc")
MF4 = shared_path("can/logs/canedge_FCBF0606_00003482_00000001-60B621D9.MF4")
J1939_DBC = shared_path("can/dbc/CSS-Electronics-SAE-J1939-DEMO.dbc")


def _rows_by_frame(path: Path) -> list[tuple[float, str, str, str, dict[str, float]]]:
    """CSV rows grouped into consecutive frames: (t, bus, id, message, {signal: value})."""
    frames: list[tuple[float, str, str, str, dict[str, float]]] = []
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        assert next(reader) == ["timestamp", "bus", "arbitration_id", "message", "signal", "value"]
        for t, bus, ident, message, signal, value in reader:
            key = (float(t), bus, ident, message)
            if not frames or frames[-1][:4] != key or signal in frames[-1][4]:
                frames.append((*key, {}))
            frames[-1][4][signal] = float(value)
    return frames


def _expected(messages: list[can.Message], pick) -> list[tuple[float, str, str, str, dict[str, float]]]:
    out = []
    for msg in messages:
        found = pick(msg)
        if found is None:
            continue
        message = found
        try:
            values = message.decode(bytes(msg.data), decode_choices=False, scaling=True)
        except cantools.database.DecodeError:
            continue
        out.append(
            (
                msg.timestamp,
                str(msg.channel),
                f"0x{msg.arbitration_id:X}",
                message.name,
                {k: float(v) for k, v in values.items()},
            )
        )
    return out


def _same(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g[1:4] == w[1:4], (g, w)
        assert abs(g[0] - w[0]) < 1e-6, (g, w)
        assert g[4].keys() == w[4].keys(), (g, w)
        for name, value in w[4].items():
            assert g[4][name] == value or (math.isnan(value) and math.isnan(g[4][name])), (name, g, w)


def test_rav4_decode_equals_cantools_frame_by_frame(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rav4.csv"
    code = main(["decode", str(RAV4), "--dbc", f"can0={PT_DBC}", "--dbc", f"can1={ADAS_DBC}", "-o", str(out)])
    assert code == 0
    summary = capsys.readouterr().err
    assert "frames 135468" in summary
    dbs = {
        "can0": cantools.database.load_file(str(PT_DBC), strict=False),
        "can1": cantools.database.load_file(str(ADAS_DBC)),
    }

    def pick(msg: can.Message):
        try:
            return dbs[msg.channel].get_message_by_frame_id(msg.arbitration_id)
        except KeyError:
            return None

    with can.LogReader(str(RAV4)) as reader:
        messages = list(reader)
    want = _expected(messages, pick)
    got = _rows_by_frame(out)
    _same(got, want)
    decoded = len(want)
    assert f"decoded {decoded}," in summary
    assert decoded > 80_000


def test_mf4_j1939_pgn_matching_equals_cantools(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "truck.csv"
    assert main(["decode", str(MF4), "--dbc", f"1={J1939_DBC}", "--j1939", "-o", str(out)]) == 0
    summary = capsys.readouterr().err
    db = cantools.database.load_file(str(J1939_DBC))
    by_pgn = {int(j1939_pgn(m.frame_id)): m for m in db.messages}

    def pick(msg: can.Message):
        if str(msg.channel) != "1" or not msg.is_extended_id or msg.is_error_frame or msg.is_remote_frame:
            return None
        return by_pgn.get(int(j1939_pgn(msg.arbitration_id)))

    with can.LogReader(str(MF4)) as reader:
        messages = list(reader)
    want = _expected(messages, pick)
    _same(_rows_by_frame(out), want)
    assert len(want) == 761  # 54.2 % of channel 1, as PROVENANCE.md says
    assert "decoded 761," in summary
    # without PGN matching nothing matches (the DBC ids carry source address 0xFE)
    assert main(["decode", str(MF4), "--dbc", f"1={J1939_DBC}", "-o", str(tmp_path / "none.csv")]) == 0
    assert "decoded 0," in capsys.readouterr().err


def test_j1939_pgn_rules() -> None:
    assert int(j1939_pgn(0x0CF00400)) == 0xF004  # PDU2: PS is a group extension
    assert int(j1939_pgn(0x18FEF147)) == 0xFEF1
    assert int(j1939_pgn(0x18EA00FE)) == 0xEA00  # PDU1: destination address dropped
    assert int(j1939_pgn(0x18EA17FE)) == 0xEA00


def test_parquet_output_has_the_csv_rows(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    args = ["decode", str(MF4), "--dbc", f"1={J1939_DBC}", "--j1939"]
    assert main([*args, "-o", str(tmp_path / "t.parquet")]) == 0
    assert main([*args, "-o", str(tmp_path / "t.csv")]) == 0
    table = pq.read_table(tmp_path / "t.parquet")
    assert table.column_names == ["timestamp", "bus", "arbitration_id", "message", "signal", "value"]
    with (tmp_path / "t.csv").open() as handle:
        rows = list(csv.reader(handle))[1:]
    assert table.num_rows == len(rows) > 0
    assert table.column("signal").to_pylist() == [r[4] for r in rows]
    assert table.column("value").to_pylist() == [float(r[5]) for r in rows]


def test_bad_dbc_is_one_line_error_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.dbc"
    bad.write_text('VERSION ""\n\nBO_ 12x FOO: 8 XXX\n')
    assert main(["decode", str(RAV4), "--dbc", str(bad), "-o", str(tmp_path / "x.csv")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tcu decode: error: ") and f"{bad}:3:" in err[-1]


@pytest.mark.parametrize("suffix", [".blf", ".asc", ".trc"])
def test_same_frames_in_other_formats_decode_the_same(tmp_path: Path, suffix: str) -> None:
    """can0 frames of the RAV4 log rewritten by python-can's writers decode to the same rows."""
    with can.LogReader(str(RAV4)) as reader:
        frames = [m for _, m in zip(range(30_000), reader, strict=False) if m.channel == "can0"]
    source = tmp_path / "can0.log"
    other = tmp_path / f"can0{suffix}"
    for path in (source, other):
        with can.Logger(str(path)) as writer:
            for msg in frames:
                writer.on_message_received(msg)
    outputs = []
    for path in (source, other):
        out = tmp_path / f"{path.suffix[1:]}.csv"
        assert main(["decode", str(path), "--dbc", str(PT_DBC), "-o", str(out)]) == 0
        with out.open(newline="") as handle:
            rows = list(csv.reader(handle))[1:]
        t0 = float(rows[0][0])  # ASC and TRC store times relative to the start
        outputs.append([(r[2], r[3], r[4], r[5], float(r[0]) - t0) for r in rows])
    assert len(outputs[0]) > 50_000
    assert [r[:4] for r in outputs[0]] == [r[:4] for r in outputs[1]]
    assert max(abs(a[4] - b[4]) for a, b in zip(*outputs, strict=True)) < 2e-4  # TRC keeps 0.1 ms


def test_cli_format_names_match_the_readers() -> None:
    from tcu.can.logs import FORMATS
    from tcu.cli._logdecode import LOG_FORMATS

    assert LOG_FORMATS == FORMATS
