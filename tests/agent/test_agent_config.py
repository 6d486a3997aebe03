from __future__ import annotations

from pathlib import Path

import pytest

from tcu.config import load_agent_config
from tcu.errors import ConfigError


def _write(tmp_path: Path, body: str, small_dbc: Path, small_mapping: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(body.replace("DBC", small_dbc.name).replace("MAPPING", small_mapping.name))
    return path


GOOD = """
[vehicle]
id = "V1"

[[bus]]
name = "can0"
interface = "virtual"
dbc = ["DBC"]

[signals]
mapping = "MAPPING"

[uplink]
target = "127.0.0.1:1"
insecure = true
"""


def test_good_config_resolves_relative_paths_and_env(
    tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    path = _write(tmp_path, GOOD, small_dbc, small_mapping)
    cfg = load_agent_config(path, env={"TCU_UPLINK_TARGET": "127.0.0.1:2", "TCU_UNRELATED": "x"})
    assert cfg.buses[0].dbc == (small_dbc.resolve(),)
    assert cfg.buses[0].channel == "can0"
    assert cfg.uplink.target == "127.0.0.1:2"
    cfg2 = load_agent_config(path, overrides={"uplink.target": "127.0.0.1:3"})
    assert cfg2.uplink.target == "127.0.0.1:3"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (("insecure = true", ""), "uplink.tls"),
        (('id = "V1"', "id = 5"), "vehicle.id"),
        (('dbc = ["DBC"]', 'dbc = ["missing.dbc"]'), "bus[0].dbc"),
        (('interface = "virtual"', ""), "bus[0].interface"),
        (('mapping = "MAPPING"', 'mapping = "nope.toml"'), "signals.mapping"),
        (("[uplink]", "[uplink]\nkeepalive_s = 5"), "uplink.keepalive_s"),
        (("[vehicle]", "[vehical]\n[vehicle]"), "vehical"),
    ],
)
def test_errors_name_the_key(
    tmp_path: Path, small_dbc: Path, small_mapping: Path, change: tuple[str, str], key: str
) -> None:
    path = _write(tmp_path, GOOD.replace(*change), small_dbc, small_mapping)
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    assert f"{key}:" in str(info.value)
    assert str(path) in str(info.value)


def test_bad_env_value_names_the_variable(tmp_path: Path, small_dbc: Path, small_mapping: Path) -> None:
    path = _write(tmp_path, GOOD, small_dbc, small_mapping)
    with pytest.raises(ConfigError, match="TCU_UPLINK_INSECURE: must be true or false"):
        load_agent_config(path, env={"TCU_UPLINK_INSECURE": "maybe"})


def test_j1939_is_a_per_bus_option(tmp_path: Path, small_dbc: Path, small_mapping: Path) -> None:
    assert load_agent_config(_write(tmp_path, GOOD, small_dbc, small_mapping)).buses[0].j1939 is False
    body = GOOD.replace('interface = "virtual"', 'interface = "virtual"\nj1939 = true')
    assert load_agent_config(_write(tmp_path, body, small_dbc, small_mapping)).buses[0].j1939 is True
    with pytest.raises(ConfigError, match=r"bus\[0\]\.j1939: must be bool"):
        load_agent_config(
            _write(tmp_path, body.replace("j1939 = true", 'j1939 = "yes"'), small_dbc, small_mapping)
        )
