"""Every TOML reader translates a syntax error, and nesting that exhausts the parser, the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcu.collect.campaign import parse_campaigns
from tcu.config import load_agent_config
from tcu.errors import ConfigError, MappingError, TcuError
from tcu.esim.policy import parse_policy
from tcu.pki.mosquitto import load_station_map
from tcu.signals.mapping import load_mapping

NESTED = "x = " + "[" * 5000 + "]" * 5000 + "\n"


def _readers(tmp_path: Path) -> list[tuple[str, object]]:
    file = tmp_path / "deep.toml"
    file.write_text(NESTED)
    return [
        ("agent config", lambda: load_agent_config(file)),
        ("mapping", lambda: load_mapping(file)),
        ("station map", lambda: load_station_map(file)),
        ("policy", lambda: parse_policy(NESTED, source=str(file))),
        ("campaigns", lambda: parse_campaigns(NESTED, path=str(file))),
    ]


def test_deep_nesting_is_bad_input_naming_the_file_not_a_recursion_error(tmp_path: Path) -> None:
    for name, read in _readers(tmp_path):
        with pytest.raises(TcuError) as info:
            read()  # type: ignore[operator]
        assert "nested too deeply" in str(info.value), name
        assert str(tmp_path / "deep.toml") in str(info.value), name


def test_a_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    file = tmp_path / "bad.toml"
    file.write_text("version = 1\n[[signal]\n")
    with pytest.raises(MappingError) as mapping:
        load_mapping(file)
    assert mapping.value.line == 2 and "not valid TOML" in str(mapping.value)
    with pytest.raises(ConfigError, match="not valid TOML") as config:
        load_agent_config(file)
    assert str(file) in str(config.value)
