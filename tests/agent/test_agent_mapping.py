from __future__ import annotations

from pathlib import Path

import pytest

from tcu.errors import MappingError
from tcu.signals.dbc import load_dbc
from tcu.signals.mapping import build_catalog, load_mapping


def test_catalog_resolves_units_resolution_and_ids(small_dbc: Path, small_mapping: Path) -> None:
    catalog = build_catalog(load_mapping(small_mapping), {"can0": [load_dbc(small_dbc)]})
    names = [s.name for s in catalog.signals]
    assert names[0] == "Vehicle.Speed"
    speed = catalog.by_name()["Vehicle.Speed"]
    assert (speed.signal_id, speed.unit, speed.resolution, speed.period_ms) == (1, "km/h", 0.01, 100)
    assert speed.source == "can0/Dyn.Speed"
    assert len({s.signal_id for s in catalog.signals}) == 5
    # The catalog id is a content hash: the same inputs give the same id, a change gives another.
    again = build_catalog(load_mapping(small_mapping), {"can0": [load_dbc(small_dbc)]})
    assert again.catalog_id == catalog.catalog_id


def test_unknown_signal_names_file_line_and_problem(small_dbc: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(
        'version = 1\n\n[[signal]]\nname = "Vehicle.Speed"\nmessage = "Dyn"\nsignal = "Speed"\n'
        "period_ms = 100\n\n"
        '[[signal]]\nname = "Vehicle.Foo"\nmessage = "Dyn"\nsignal = "Nope"\nperiod_ms = 100\n'
    )
    with pytest.raises(MappingError) as info:
        build_catalog(load_mapping(path), {"can0": [load_dbc(small_dbc)]}, mapping_path=path)
    assert info.value.line == 9
    assert f"{path}:9:" in str(info.value)
    assert "has no signal 'Nope'" in str(info.value)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('name = "speed"\nmessage = "Dyn"\nsignal = "Speed"\nperiod_ms = 100', "not a VSS-style"),
        ('name = "Vehicle.Speed"\nmessage = "Dyn"\nsignal = "Speed"\nperiod_ms = 0', "period_ms"),
        (
            'name = "Vehicle.Speed"\nmessage = "Dyn"\nsignal = "Speed"\nperiod_ms = 10\nextra = 1',
            "unknown keys",
        ),
        ('name = "Vehicle.Speed"\nsignal = "Speed"\nperiod_ms = 10', "'message'"),
    ],
)
def test_bad_entries_are_refused_with_line(tmp_path: Path, body: str, problem: str) -> None:
    path = tmp_path / "m.toml"
    path.write_text(f"version = 1\n[[signal]]\n{body}\n")
    with pytest.raises(MappingError) as info:
        load_mapping(path)
    assert info.value.line == 2
    assert problem in str(info.value)


def test_duplicate_name_points_at_both_lines(tmp_path: Path) -> None:
    entry = '[[signal]]\nname = "Vehicle.Speed"\nmessage = "Dyn"\nsignal = "Speed"\nperiod_ms = 100\n'
    path = tmp_path / "m.toml"
    path.write_text("version = 1\n" + entry + entry)
    with pytest.raises(MappingError, match=r"m.toml:7: .*mapped twice \(first at line 2\)"):
        load_mapping(path)


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text("version = 1\n[[signal]]\nname = \n")
    with pytest.raises(MappingError, match="not valid TOML") as info:
        load_mapping(path)
    assert info.value.line == 3


def test_message_on_unconfigured_bus(small_dbc: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(
        'version = 1\n[[signal]]\nname = "Vehicle.Speed"\nmessage = "Dyn"\nsignal = "Speed"\n'
        'period_ms = 100\nbus = "can7"\n'
    )
    with pytest.raises(MappingError, match="bus 'can7' is not configured"):
        build_catalog(load_mapping(path), {"can0": [load_dbc(small_dbc)]}, mapping_path=path)
