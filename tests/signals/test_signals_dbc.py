"""load_dbc: errors name the file and line; strict=None falls back on overlapping signals."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tcu.errors import DbcError
from tcu.signals import load_dbc
from tools.shared_data import shared_path

DBC_DIR = shared_path("can/dbc")


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    text = (DBC_DIR / "toyota_adas.dbc").read_text(encoding="cp1252").splitlines()
    line = next(i for i, t in enumerate(text) if t.startswith("BO_ "))
    text[line] = text[line].replace("BO_ ", "BO_ x", 1)
    bad = tmp_path / "bad.dbc"
    bad.write_text("\n".join(text) + "\n", encoding="cp1252")
    with pytest.raises(DbcError) as info:
        load_dbc(bad)
    assert info.value.path == str(bad)
    assert info.value.line == line + 1
    assert f"{bad}:{line + 1}:" in str(info.value)
    assert "Invalid syntax" in str(info.value)
    assert info.value.__cause__ is not None


def test_strict_true_reports_overlap_with_message_line() -> None:
    path = DBC_DIR / "vw_mqb.dbc"
    with pytest.raises(DbcError) as info:
        load_dbc(path, strict=True)
    assert "overlapping in message PLA_01" in str(info.value)
    lines = path.read_text(encoding="cp1252").splitlines()
    assert info.value.line is not None
    assert lines[info.value.line - 1].startswith("BO_ ") and " PLA_01:" in lines[info.value.line - 1]


def test_default_falls_back_and_warns_naming_the_signals(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tcu.signals.dbc"):
        db = load_dbc(DBC_DIR / "toyota_new_mc_pt_flattened.dbc")
    assert len(db.messages) == 58
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "PCS_HUD" in text and "PCS_TEMP" in text and "SET_ME_X10" in text


def test_strict_dbc_loads_without_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tcu.signals.dbc"):
        db = load_dbc(DBC_DIR / "hyundai_2015_ccan.dbc")
    assert len(db.messages) == 113
    assert not caplog.records


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DbcError, match="no such DBC file"):
        load_dbc(tmp_path / "nope.dbc")
