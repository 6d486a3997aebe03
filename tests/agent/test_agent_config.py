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
        (("[uplink]", "[uplink]\nconnect_timeout_s = 0"), "uplink.connect_timeout_s"),
        (("[uplink]", "[uplink]\ndrain_timeout_s = -1"), "uplink.drain_timeout_s"),
        (('interface = "virtual"', 'interface = "virtual"\nretry_initial_s = 0'), "bus[0].retry_initial_s"),
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


@pytest.mark.parametrize(
    ("change", "key", "suggestion"),
    [
        (('interface = "virtual"', 'interface = "virtual"\nbitrat = 500000'), "bus[0].bitrat", "bitrate"),
        (("[uplink]", "[batch]\nmax_age_msx = 200\n[uplink]"), "batch.max_age_msx", "max_age_ms"),
        (('target = "127.0.0.1:1"', 'targte = "127.0.0.1:1"'), "uplink.targte", "target"),
        (('id = "V1"', 'id = "V1"\nidd = "V2"'), "vehicle.idd", "id"),
        (('mapping = "MAPPING"', 'mapping = "MAPPING"\nmaping = "x"'), "signals.maping", "mapping"),
        (
            ("insecure = true", '[uplink.tls]\nca_cert = "a"\ncert = "b"\nkey = "c"\nserver_nme = "x"'),
            "uplink.tls.server_nme",
            "server_name",
        ),
        (
            ("[uplink]", '[spool]\ndirectory = "s"\ndurabilty = "crash"\n[uplink]'),
            "spool.durabilty",
            "durability",
        ),
        (
            ("[uplink]", "[campaigns]\ndefault_periodc = true\n[uplink]"),
            "campaigns.default_periodc",
            "default_periodic",
        ),
        (
            ("[uplink]", '[commands]\nverify_key = "k.pem"\nnonce_stor = "n"\n[uplink]'),
            "commands.nonce_stor",
            "nonce_store",
        ),
        (
            (
                "[uplink]",
                '[connectivity]\nport = "/dev/x"\npolicy = "p"\naudit_log = "a"\n'
                "poll_intervl_s = 1\n[uplink]",
            ),
            "connectivity.poll_intervl_s",
            "poll_interval_s",
        ),
        (("[vehicle]", "[vehicl]\n[vehicle]"), "vehicl", "vehicle"),
    ],
)
def test_unknown_keys_are_refused_with_a_suggestion(
    tmp_path: Path,
    small_dbc: Path,
    small_mapping: Path,
    *,
    change: tuple[str, str],
    key: str,
    suggestion: str,
) -> None:
    body = GOOD.replace(*change)
    assert body != GOOD
    path = _write(tmp_path, body, small_dbc, small_mapping)
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: unknown "), message
    assert f"did you mean {suggestion!r}?" in message


@pytest.mark.parametrize(
    ("env", "name", "problem"),
    [
        ({"TCU_BATCH_MAX_AGE_MS": "abc"}, "TCU_BATCH_MAX_AGE_MS", "must be an integer, got 'abc'"),
        ({"TCU_BATCH_MAX_AGE_MSX": "200"}, "TCU_BATCH_MAX_AGE_MSX", "did you mean TCU_BATCH_MAX_AGE_MS?"),
        ({"TCU_UPLINK_TARGTE": "h:1"}, "TCU_UPLINK_TARGTE", "did you mean TCU_UPLINK_TARGET?"),
        ({"TCU_UPLINK_BACKOFF_MAX_S": "soon"}, "TCU_UPLINK_BACKOFF_MAX_S", "must be a number, got 'soon'"),
        ({"TCU_SPOOL_MAX_BYTES": "1e9"}, "TCU_SPOOL_MAX_BYTES", "must be an integer"),
        ({"TCU_BUS_BITRATE": "500000"}, "TCU_BUS_BITRATE", "[[bus]]"),
        ({"TCU_UPLNK_TARGET": "h:1"}, "TCU_UPLNK_TARGET", "did you mean TCU_UPLINK_TARGET?"),
    ],
)
def test_bad_env_is_refused_even_without_the_section(
    tmp_path: Path, small_dbc: Path, small_mapping: Path, *, env: dict[str, str], name: str, problem: str
) -> None:
    path = _write(tmp_path, GOOD, small_dbc, small_mapping)
    with pytest.raises(ConfigError) as info:
        load_agent_config(path, env=env)
    assert f"{name}: " in str(info.value)
    assert problem in str(info.value)


def test_env_sets_keys_of_sections_the_file_lacks(
    tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    path = _write(tmp_path, GOOD, small_dbc, small_mapping)
    cfg = load_agent_config(
        path,
        env={
            "TCU_BATCH_MAX_AGE_MS": "250",
            "TCU_UPLINK_DRAIN_TIMEOUT_S": "2.5",
            "TCU_SHARED_DATA": "/elsewhere",  # not a config section: left alone
            "TCU_UNRELATED": "x",
        },
    )
    assert cfg.batch.max_age_ms == 250
    assert cfg.uplink.drain_timeout_s == 2.5


def test_j1939_is_a_per_bus_option(tmp_path: Path, small_dbc: Path, small_mapping: Path) -> None:
    assert load_agent_config(_write(tmp_path, GOOD, small_dbc, small_mapping)).buses[0].j1939 is False
    body = GOOD.replace('interface = "virtual"', 'interface = "virtual"\nj1939 = true')
    assert load_agent_config(_write(tmp_path, body, small_dbc, small_mapping)).buses[0].j1939 is True
    with pytest.raises(ConfigError, match=r"bus\[0\]\.j1939: must be bool"):
        load_agent_config(
            _write(tmp_path, body.replace("j1939 = true", 'j1939 = "yes"'), small_dbc, small_mapping)
        )


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('durability = "sometimes"', "spool.durability"),
        ('compression = "lz4"', "spool.compression"),
        ("segment_bytes = 100", "spool.segment_bytes"),
        ("max_bytes = 5000\nsegment_bytes = 8192", "spool.max_bytes"),
        ("max_age_s = 0", "spool.max_age_s"),
    ],
)
def test_spool_settings_are_checked_once_when_the_file_is_loaded(
    tmp_path: Path, small_dbc: Path, small_mapping: Path, line: str, key: str
) -> None:
    """[spool] is parsed once, into the type the spool takes: a bad value names the file and key at load."""
    path = _write(tmp_path, GOOD + f'\n[spool]\ndirectory = "spool"\n{line}\n', small_dbc, small_mapping)
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    assert f"{key}:" in str(info.value)
    assert str(path) in str(info.value)


def test_spool_settings_are_what_the_spool_takes(
    tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    from tcu.spool import SpoolConfig

    path = _write(
        tmp_path, GOOD + '\n[spool]\ndirectory = "spool"\ndurability = "crash"\n', small_dbc, small_mapping
    )
    spool = load_agent_config(path).spool
    assert isinstance(spool, SpoolConfig)
    assert (spool.directory, spool.durability) == (tmp_path / "spool", "crash")


CONNECTIVITY = '\n[connectivity]\nport = "/dev/ttyUSB2"\npolicy = "roaming.toml"\naudit_log = "audit.jsonl"\n'


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('clock = "sundial"', "connectivity.clock"),
        ("poll_interval_s = 0", "connectivity.poll_interval_s"),
        ("reopen_after_errors = 0", "connectivity.reopen_after_errors"),
        ('port = ""', "connectivity.port"),
    ],
)
def test_connectivity_is_checked_once_when_the_file_is_loaded(
    tmp_path: Path, small_dbc: Path, small_mapping: Path, line: str, key: str
) -> None:
    body = GOOD + CONNECTIVITY.replace('port = "/dev/ttyUSB2"\n', "") + line + "\n"
    if "port" not in line:
        body += 'port = "/dev/ttyUSB2"\n'
    path = _write(tmp_path, body, small_dbc, small_mapping)
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    assert f"{key}:" in str(info.value)
    assert str(path) in str(info.value)


def test_connectivity_is_a_frozen_dataclass_with_absolute_paths(
    tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    from tcu.config import ConnectivityConfig

    path = _write(tmp_path, GOOD + CONNECTIVITY, small_dbc, small_mapping)
    connectivity = load_agent_config(path).connectivity
    assert isinstance(connectivity, ConnectivityConfig)
    assert connectivity.policy == tmp_path / "roaming.toml"
    assert (connectivity.port, connectivity.clock) == ("/dev/ttyUSB2", "gnss")


def test_frames_table_sets_the_tick_the_buffers_and_their_overflow_policy(
    tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    default = load_agent_config(_write(tmp_path, GOOD, small_dbc, small_mapping))
    assert (default.tick_ms, default.frame_buffer_frames, default.frame_overflow) == (20, 65_536, "drop")
    body = GOOD + '\n[frames]\ntick_ms = 50\nbuffer_frames = 1000\noverflow = "block"\n'
    cfg = load_agent_config(_write(tmp_path, body, small_dbc, small_mapping))
    assert (cfg.tick_ms, cfg.frame_buffer_frames, cfg.frame_overflow) == (50, 1000, "block")
    assert cfg.reader_batch_ms == 50  # python-can buses group frames over one tick
    env = load_agent_config(
        _write(tmp_path, GOOD, small_dbc, small_mapping), env={"TCU_FRAMES_TICK_MS": "10"}
    )
    assert env.tick_ms == 10
    for bad, key in (
        ("tick_ms = 0", "frames.tick_ms"),
        ("tick_ms = 5000", "frames.tick_ms"),
        ("buffer_frames = 0", "frames.buffer_frames"),
        ('overflow = "oldest"', "frames.overflow"),
        ("tick = 5", "frames.tick"),
    ):
        path = _write(tmp_path, GOOD + f"\n[frames]\n{bad}\n", small_dbc, small_mapping)
        with pytest.raises(ConfigError, match=key):
            load_agent_config(path)
