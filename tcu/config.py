"""One frozen configuration tree for the vehicle agent.

Layers, later wins: the TOML file, then ``TCU_<SECTION>_<KEY>`` environment
variables (read only by :func:`load_agent_config` when the CLI passes
``os.environ``), then CLI flags. Relative paths in the file are relative to
the file. Every unknown key, in every table, is refused with the closest known one
(:func:`check_keys`, over :data:`KNOWN_KEYS`). Every error names the key::

    [vehicle]
    id = "SIMVIN0000000001"

    [[bus]]
    name = "can0"                 # the name signals and the mapping refer to
    interface = "socketcand"      # any python-can interface, or "replay"
    channel = "can0"
    dbc = ["vehicle.dbc"]
    options = { host = "127.0.0.1", port = 29536 }   # passed to python-can

    [signals]
    mapping = "vehicle_vss.toml"

    [uplink]
    target = "127.0.0.1:50051"
    insecure = true

    [state]                       # optional: $STATE_DIRECTORY, else /var/lib/tcu (root)
    directory = "/var/lib/tcu"    # or ~/.local/state/tcu (see state_directory())

    [spool]                       # optional: without it, <state>/spool with power-loss durability
    directory = "/var/lib/tcu/spool"   # default <state directory>/spool
    enabled = true                # false: batches wait in memory only (logged at WARNING)
    durability = "power-loss"     # or "crash"
    max_bytes = 268435456
    max_age_s = 604800
    compression = "zstd"          # or "none"
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tcu.errors import ConfigError
from tcu.tomlutil import parse_toml

__all__ = [
    "CONNECTIVITY_KEYS",
    "KNOWN_KEYS",
    "AgentConfig",
    "BatchConfig",
    "BusConfig",
    "CampaignSettings",
    "CommandSettings",
    "Compression",
    "ConnectivityConfig",
    "Durability",
    "OnDamage",
    "SpoolConfig",
    "SpoolOrigin",
    "SpoolSettings",
    "TlsConfig",
    "UplinkConfig",
    "build_agent_config",
    "check_keys",
    "default_nonce_store",
    "did_you_mean",
    "load_agent_config",
    "parse_connectivity",
    "read_config_document",
    "state_directory",
]


@dataclass(frozen=True, slots=True)
class BusConfig:
    """One CAN bus opened with python-can."""

    name: str
    interface: str
    channel: str
    dbc: tuple[Path, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    bitrate: int | None = None
    retry_initial_s: float = 1.0
    """First wait before opening the bus again after it could not be opened or failed."""
    retry_max_s: float = 30.0
    """The wait doubles after each failed attempt up to this cap."""
    j1939: bool = False
    """Match extended frames the DBC does not list by J1939 parameter group number too."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """mTLS material, as file paths (never the secrets themselves)."""

    ca_cert: Path
    cert: Path
    key: Path
    server_name: str | None = None


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    target: str = "127.0.0.1:50051"
    insecure: bool = False
    tls: TlsConfig | None = None
    connect_timeout_s: float = 10.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    """Reconnect waits grow to this (jittered): after a long outage the next attempt is at most
    this far away (``tools/bench/wakeup.py`` measures the wake-up; 30 s before 2026-12-06)."""
    keepalive_s: float = 45.0
    ack_timeout_s: float = 30.0
    """A stream on which batches were sent and nothing came back for this long is given up and
    reconnected (a silent cellular link); 0: never."""
    max_unacked_batches: int = 10_000
    drain_timeout_s: float = 15.0


@dataclass(frozen=True, slots=True)
class BatchConfig:
    max_samples: int = 5_000
    max_age_ms: int = 1000


FrameOverflow = Literal["drop", "block"]
Durability = Literal["power-loss", "crash"]
Compression = Literal["none", "zstd"]
OnDamage = Literal["refuse", "start-fresh"]
SpoolOrigin = Literal["configured", "default", "disabled"]


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    """Where and how the spool stores batches.

    ``durability``:
      * ``"power-loss"``: :meth:`Spool.append` returns only after the record's bytes are
        ``fdatasync``-ed, and the directory is ``fsync``-ed after a segment is created,
        replaced or deleted. Acks are ``fdatasync``-ed too. Survives a power cut.
      * ``"crash"``: :meth:`Spool.append` returns after ``write()`` handed the record to the
        OS. Survives ``kill -9`` of the process, not a power cut or kernel crash.

    ``max_bytes`` bounds the segment files on disk and ``max_age_s`` (``None``: no age bound)
    the age of unacknowledged records; both evict by priority (see :class:`Spool`).
    ``segment_bytes`` is the size after which appends go to a new segment file.
    ``compression="zstd"`` compresses each payload (kept raw when that does not shrink it).
    ``on_damage`` decides what :meth:`Spool.open` does with a spool whose state cannot be
    rebuilt (``state.json`` and the ``epoch`` file both lost while segments exist):
    ``"refuse"`` raises :class:`SpoolCorruptError` and leaves the files alone;
    ``"start-fresh"`` moves them into ``damaged-<ns>/``, starts a new boot epoch and writes a
    ``"corrupt"`` tombstone for each unacknowledged batch found, so the loss is reported.
    """

    directory: Path
    durability: Durability = "power-loss"
    max_bytes: int = 256 * 1024 * 1024
    max_age_s: float | None = 7 * 24 * 3600.0
    segment_bytes: int = 4 * 1024 * 1024
    compression: Compression = "none"
    zstd_level: int = 3
    on_damage: OnDamage = "refuse"

    def __post_init__(self) -> None:
        if self.durability not in ("power-loss", "crash"):
            raise ConfigError(
                f"must be 'power-loss' or 'crash', got {self.durability!r}", key="spool.durability"
            )
        if self.compression not in ("none", "zstd"):
            raise ConfigError(f"must be 'none' or 'zstd', got {self.compression!r}", key="spool.compression")
        if self.segment_bytes < 4096:
            raise ConfigError(f"must be at least 4096, got {self.segment_bytes}", key="spool.segment_bytes")
        if self.max_bytes < self.segment_bytes:
            raise ConfigError(
                f"must be at least segment_bytes ({self.segment_bytes}), got {self.max_bytes}",
                key="spool.max_bytes",
            )
        if self.max_age_s is not None and self.max_age_s <= 0:
            raise ConfigError(f"must be positive or None, got {self.max_age_s}", key="spool.max_age_s")
        if self.on_damage not in ("refuse", "start-fresh"):
            raise ConfigError(
                f"must be 'refuse' or 'start-fresh', got {self.on_damage!r}", key="spool.on_damage"
            )
        if not 1 <= self.zstd_level <= 22:
            raise ConfigError(f"must be 1..22, got {self.zstd_level}", key="spool.zstd_level")


@dataclass(frozen=True, slots=True)
class SpoolSettings(SpoolConfig):
    """The ``[spool]`` section: the :class:`SpoolConfig` the agent opens its spool with, plus its backlog.

    Parsed and checked once, when the file is loaded; the agent hands it to
    :meth:`tcu.spool.Spool.open` as it is.
    """

    backlog_bytes: int = 16 * 1024 * 1024
    """Batches the disk cannot take wait in RAM up to this many bytes; then the oldest is dropped
    and reported upstream as a ``DataLoss``."""

    def __post_init__(self) -> None:
        SpoolConfig.__post_init__(self)  # (zero-argument super() fails in a slotted dataclass)
        if self.backlog_bytes < 0:
            raise ConfigError(f"must be 0 or more, got {self.backlog_bytes}", key="spool.backlog_bytes")


@dataclass(frozen=True, slots=True)
class CampaignSettings:
    """``[campaigns]``: collection campaigns besides (or instead of) the default periodic one."""

    file: Path | None = None
    memory_budget_bytes: int = 16 * 1024 * 1024
    default_periodic: bool = True


@dataclass(frozen=True, slots=True)
class CommandSettings:
    """``[commands]``: backend-signed commands on the Upload stream (campaign push, ...).

    ``nonce_store``: the file that keeps the nonces of accepted commands across restarts
    (so a captured command cannot be replayed after one), or ``"memory"``, the explicit
    choice to forget them on restart (the agent then logs a warning). The loader's
    default is :func:`default_nonce_store`.
    """

    verify_key: Path
    nonce_store: Path | Literal["memory"]
    max_skew_s: float = 30.0


@dataclass(frozen=True, slots=True)
class V2xTriggerSettings:
    """``[[v2x.trigger]]``: a DENM from a condition over decoded signals (campaign expression syntax)."""

    name: str
    condition: str
    cause_code: int
    sub_cause_code: int = 0
    validity_s: int = 60
    relevance_m: float = 500.0
    traffic_direction: str = "upstreamTraffic"
    hold_ms: int = 0
    release_ms: int = 1000
    repetition_ms: int = 1000
    update_s: float = 20.0
    information_quality: int = 3


DEFAULT_V2X_TRIGGERS: tuple[V2xTriggerSettings, ...] = (
    # Emergency electronic brake lights: dangerousSituation(99) / emergencyElectronicBrakeEngaged(1).
    V2xTriggerSettings(
        "hard_braking",
        "Vehicle.Acceleration.Longitudinal < -6",
        99,
        1,
        validity_s=20,
        relevance_m=500.0,
        release_ms=1000,
        update_s=10.0,
    ),
    # Stationary vehicle with hazard lights: stationaryVehicle(94).
    V2xTriggerSettings(
        "stationary_hazard",
        "Vehicle.Speed < 1 and Vehicle.Body.Lights.Hazard.IsSignaling == 1",
        94,
        0,
        validity_s=120,
        relevance_m=1000.0,
        hold_ms=2000,
        release_ms=2000,
        update_s=30.0,
    ),
    # Adverse road condition, adhesion(6), from ESP/traction control activity.
    V2xTriggerSettings(
        "low_adhesion",
        "Vehicle.ADAS.ESC.IsEngaged == 1 or Vehicle.ADAS.TCS.IsEngaged == 1",
        6,
        0,
        validity_s=600,
        relevance_m=1000.0,
        release_ms=5000,
        update_s=120.0,
    ),
)


@dataclass(frozen=True, slots=True)
class V2xSettings:
    """``[v2x]``: V2N over MQTT (broker, mTLS files, station, tiles, CAM rate, DENM triggers)."""

    host: str
    port: int
    station_id: int
    tls: TlsConfig | None
    client_id: str
    station_type: int = 5
    vehicle_role: str = "default"
    length_m: float | None = None
    width_m: float | None = None
    prefix: str = "v2x"
    publish_level: int = 18
    subscribe_level: int = 14
    subscribe: tuple[str, ...] = ("denm",)
    cam: bool = True
    cam_min_interval_ms: int = 100
    cam_max_interval_ms: int = 1000
    standstill_kmh: float = 2.0
    ahead_deg: float = 60.0
    same_direction_deg: float = 60.0
    session_expiry_s: int = 300
    queue_size: int = 256
    reconnect_max_s: float = 30.0
    drain_timeout_s: float = 2.0
    triggers: tuple[V2xTriggerSettings, ...] = DEFAULT_V2X_TRIGGERS
    triggers_configured: bool = False
    """False: the built-in triggers, each used only when the catalog has its signals."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    vehicle_id: str
    buses: tuple[BusConfig, ...]
    mapping: Path
    uplink: UplinkConfig
    batch: BatchConfig = BatchConfig()
    reader_batch_frames: int = 512
    reader_batch_ms: int = 20
    tick_ms: int = 20
    """``[frames] tick_ms``: the pipeline takes every bus's frames once per tick."""
    frame_buffer_frames: int = 65_536
    """``[frames] buffer_frames``: frames each bus's buffer holds between ticks at most."""
    frame_overflow: FrameOverflow = "drop"
    """``[frames] overflow``: ``drop`` (counted, DataLoss) or ``block`` (the log replay bus always blocks)."""
    spool: SpoolSettings | None = None
    campaigns: CampaignSettings | None = None
    commands: CommandSettings | None = None
    connectivity: ConnectivityConfig | None = None
    """The ``[connectivity]`` table (modem, eSIM roaming)."""
    source: Path | None = None
    v2x: V2xSettings | None = None
    metrics_listen: str | None = None
    """``[metrics] listen``: ``host:port`` of the Prometheus endpoint and ``/healthz`` (off without it)."""
    state_dir: Path | None = None
    """The state directory the file resolved to (``[state] directory``, else
    :func:`state_directory`); ``None`` for a config built in code."""
    spool_origin: SpoolOrigin = "configured"
    """Where :attr:`spool` came from: ``"configured"`` (a ``[spool]`` section), ``"default"``
    (none: ``<state>/spool`` with power-loss durability) or ``"disabled"`` (``[spool] enabled =
    false``: :attr:`spool` is ``None`` and batches wait in memory)."""


CONNECTIVITY_KEYS: Mapping[str, type] = {
    "port": str,
    "policy": str,
    "audit_log": str,
    "modem_profile": str,
    "poll_interval_s": float,
    "command_timeout_s": float,
    "apdu_timeout_s": float,
    "card_refresh_s": float,
    "clock": str,
    "reopen_after_errors": int,
    "reopen_backoff_s": float,
    "smdp_ca": str,
    "smdp_connect": str,
    "es9_timeout_s": float,
}
"""The keys of ``[connectivity]`` (checked by :func:`parse_connectivity`)."""


@dataclass(frozen=True, slots=True)
class ConnectivityConfig:
    """The checked ``[connectivity]`` table (modem, eSIM roaming; paths absolute).

    Parsed once, when the file is loaded (:func:`parse_connectivity`); the agent checks only
    that the modem profile exists (:mod:`tcu.agent.connectivity`, beside the modem adapter).
    """

    port: str
    policy: Path
    audit_log: Path
    modem_profile: str = "generic"
    poll_interval_s: float = 2.0
    command_timeout_s: float | None = None
    apdu_timeout_s: float | None = None
    card_refresh_s: float = 60.0
    clock: Literal["gnss", "wall"] = "gnss"
    reopen_after_errors: int = 5
    reopen_backoff_s: float = 1.0
    smdp_ca: Path | None = None
    """CA file (PEM) SM-DP+ TLS certificates must chain to; without it the agent downloads nothing."""
    smdp_connect: tuple[str, int] | None = None
    """Connect to this ``(host, port)`` instead of an activation code's SM-DP+ (tests, a local relay)."""
    es9_timeout_s: float = 30.0


def _conn_str(table: Mapping[str, Any], key: str, source: str | None, default: str | None = None) -> str:
    value = table.get(key, default)
    if value is None:
        raise ConfigError("required", key=f"connectivity.{key}", path=source)
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"must be a non-empty string, got {value!r}", key=f"connectivity.{key}", path=source
        )
    return value


def _conn_positive(table: Mapping[str, Any], key: str, source: str | None, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"must be a positive number, got {value!r}", key=f"connectivity.{key}", path=source)
    return float(value)


def _conn_optional(table: Mapping[str, Any], key: str, source: str | None) -> float | None:
    return _conn_positive(table, key, source, 1.0) if key in table else None


def parse_connectivity(
    table: Mapping[str, Any], *, base: Path, source: str | None = None
) -> ConnectivityConfig:
    """Check a ``[connectivity]`` table; relative paths are resolved against ``base``.

    The modem profile's name is not looked up here (the profiles belong to :mod:`tcu.modem`).

    :class:`ConfigError` names ``connectivity.<key>`` (and ``source``, the file).
    """
    check_keys(table, CONNECTIVITY_KEYS, "connectivity", path=source)
    clock = _conn_str(table, "clock", source, "gnss")
    if clock not in ("gnss", "wall"):
        raise ConfigError(f"must be 'gnss' or 'wall', got {clock!r}", key="connectivity.clock", path=source)
    reopen = table.get("reopen_after_errors", 5)
    if isinstance(reopen, bool) or not isinstance(reopen, int) or reopen < 1:
        raise ConfigError(
            f"must be an integer >= 1, got {reopen!r}", key="connectivity.reopen_after_errors", path=source
        )
    profile_name = _conn_str(table, "modem_profile", source, "generic")  # must exist: checked by the agent
    return ConnectivityConfig(
        port=_conn_str(table, "port", source),
        policy=base / _conn_str(table, "policy", source),
        audit_log=base / _conn_str(table, "audit_log", source),
        modem_profile=profile_name,
        poll_interval_s=_conn_positive(table, "poll_interval_s", source, 2.0),
        command_timeout_s=_conn_optional(table, "command_timeout_s", source),
        apdu_timeout_s=_conn_optional(table, "apdu_timeout_s", source),
        card_refresh_s=_conn_positive(table, "card_refresh_s", source, 60.0),
        clock="gnss" if clock == "gnss" else "wall",
        reopen_after_errors=reopen,
        reopen_backoff_s=_conn_positive(table, "reopen_backoff_s", source, 1.0),
        smdp_ca=base / _conn_str(table, "smdp_ca", source) if "smdp_ca" in table else None,
        smdp_connect=_host_port(table, "smdp_connect", source),
        es9_timeout_s=_conn_positive(table, "es9_timeout_s", source, 30.0),
    )


def _host_port(table: Mapping[str, Any], key: str, source: str | None) -> tuple[str, int] | None:
    if key not in table:
        return None
    text = _conn_str(table, key, source)
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"expected HOST:PORT, got {text!r}", key=f"connectivity.{key}", path=source)
    return host.strip("[]"), int(port)


KNOWN_KEYS: Mapping[str, Mapping[str, type]] = {
    "vehicle": {"id": str},
    "bus": {
        "name": str,
        "interface": str,
        "channel": str,
        "dbc": list,
        "options": dict,
        "bitrate": int,
        "retry_initial_s": float,
        "retry_max_s": float,
        "j1939": bool,
    },
    "signals": {"mapping": str},
    "uplink": {
        "target": str,
        "insecure": bool,
        "tls": dict,
        "connect_timeout_s": float,
        "backoff_initial_s": float,
        "backoff_max_s": float,
        "keepalive_s": float,
        "ack_timeout_s": float,
        "max_unacked_batches": int,
        "drain_timeout_s": float,
    },
    "uplink.tls": {"ca_cert": str, "cert": str, "key": str, "server_name": str},
    "batch": {"max_samples": int, "max_age_ms": int},
    "frames": {"tick_ms": int, "buffer_frames": int, "overflow": str},
    "state": {"directory": str},
    "spool": {
        "enabled": bool,
        "directory": str,
        "durability": str,
        "max_bytes": int,
        "max_age_s": float,
        "segment_bytes": int,
        "compression": str,
        "backlog_bytes": int,
        "on_damage": str,
    },
    "campaigns": {"file": str, "memory_budget_bytes": int, "default_periodic": bool},
    "commands": {"verify_key": str, "nonce_store": str, "max_skew_s": float},
    "connectivity": CONNECTIVITY_KEYS,
    "v2x": {
        "broker": str,
        "station_id": int,
        "tls": dict,
        "client_id": str,
        "station_type": int,
        "vehicle_role": str,
        "length_m": float,
        "width_m": float,
        "prefix": str,
        "publish_level": int,
        "subscribe_level": int,
        "subscribe": list,
        "cam": bool,
        "cam_min_interval_ms": int,
        "cam_max_interval_ms": int,
        "standstill_kmh": float,
        "ahead_deg": float,
        "same_direction_deg": float,
        "session_expiry_s": int,
        "queue_size": int,
        "reconnect_max_s": float,
        "drain_timeout_s": float,
        "trigger": list,
    },
    "v2x.tls": {"ca_cert": str, "cert": str, "key": str},
    "metrics": {"listen": str},
}
"""Every key the agent file may hold, per table (``uplink.tls`` is a subtable; ``bus`` is
``[[bus]]``, a list of tables). A key that is not here is refused by :func:`check_keys`."""

V2X_TRIGGER_KEYS: dict[str, type] = {
    "name": str,
    "condition": str,
    "cause": int,
    "sub_cause": int,
    "validity_s": float,
    "relevance_m": float,
    "traffic_direction": str,
    "hold_ms": int,
    "release_ms": int,
    "repetition_ms": int,
    "update_s": float,
    "information_quality": int,
}
"""Keys of a ``[[v2x.trigger]]`` table (a list of tables: not settable from the environment)."""

DEFAULT_METRICS_LISTEN = "127.0.0.1:9108"
"""``[metrics] listen`` when the section is there without it: loopback only."""

SECTIONS: tuple[str, ...] = tuple(k for k in KNOWN_KEYS if "." not in k)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def did_you_mean(word: str, candidates: Iterable[str], *, cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate (difflib), or ``""``."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(
    table: Mapping[str, Any],
    known: Iterable[str],
    where: str | None,
    *,
    path: str | None = None,
    what: str = "key",
) -> None:
    """Refuse the first key of ``table`` that is not in ``known``.

    The :class:`ConfigError` names ``<where>.<key>`` (and ``path``, the file), suggests the
    closest known key and lists them all::

        agent.toml: batch.max_age_msx: unknown key (did you mean 'max_age_ms'?); known keys: ...
    """
    names = sorted(known)
    for key in table:
        if key not in names:
            dotted = f"{where}.{key}" if where else str(key)
            raise ConfigError(
                f"unknown {what}{did_you_mean(str(key), names)}; known {what}s: {', '.join(names)}",
                key=dotted,
                path=path,
            )


def _get(table: Mapping[str, Any], key: str, dotted: str, kind: type, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise ConfigError("is required", key=dotted)
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"must be {kind.__name__}, got {type(value).__name__} {value!r}", key=dotted)
    return value


def _path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _env_names(section: str) -> list[str]:
    names = [f"TCU_{section}_{k}".upper() for k, kind in KNOWN_KEYS[section].items() if kind is not dict]
    for sub, keys in KNOWN_KEYS.items():
        if sub.startswith(f"{section}."):
            names += [f"TCU_{sub.replace('.', '_')}_{k}".upper() for k in keys]
    return names


def _env_value(raw: str, kind: type, name: str) -> Any:
    if kind is bool:
        if raw.lower() not in _TRUE | _FALSE:
            raise ConfigError(f"must be true or false, got {raw!r}", key=name)
        return raw.lower() in _TRUE
    if kind is int:
        try:
            return int(raw)
        except ValueError as exc:
            raise ConfigError(f"must be an integer, got {raw!r}", key=name) from exc
    if kind is float:
        try:
            return float(raw)
        except ValueError as exc:
            raise ConfigError(f"must be a number, got {raw!r}", key=name) from exc
    if kind is str:
        return raw
    raise ConfigError(f"is a {kind.__name__} and cannot be set from the environment", key=name)


def state_directory(env: Mapping[str, str] | None) -> Path:
    """Where the agent keeps its state (spool, catalogs, nonces) without ``[state] directory``.

    ``$STATE_DIRECTORY`` (set by systemd's ``StateDirectory=``; its first entry), else
    ``$XDG_STATE_HOME/tcu``, else ``/var/lib/tcu`` for root and ``~/.local/state/tcu``
    for other users.
    """
    env = env or {}
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state)
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg:
        return Path(xdg) / "tcu"
    if os.geteuid() == 0:
        return Path("/var/lib/tcu")
    home = env.get("HOME", "")
    return (Path(home) if home else Path.home()) / ".local" / "state" / "tcu"


def default_nonce_store(spool: SpoolSettings | None, env: Mapping[str, str] | None) -> Path:
    """``<spool directory>/nonces`` with a ``[spool]``, else ``<state directory>/nonces``."""
    if spool is not None:
        return spool.directory / "nonces"
    return state_directory(env) / "nonces"


def _apply_env(doc: dict[str, Any], env: Mapping[str, str]) -> None:
    """``TCU_UPLINK_TARGET=host:port`` sets ``[uplink] target``; scalars only.

    ``TCU_UPLINK_TLS_CERT`` sets ``[uplink.tls] cert``. A variable whose section is an
    agent section (or close to one: ``TCU_UPLNK_...``) must name a known key and hold a
    value of its type, whether or not the file has that section; other ``TCU_*``
    variables (``TCU_SHARED_DATA``, ...) are not configuration and are left alone.
    """
    for name, raw in sorted(env.items()):
        if not name.startswith("TCU_"):
            continue
        section, _, key = name[4:].lower().partition("_")
        if section not in SECTIONS:
            close = difflib.get_close_matches(section, SECTIONS, n=1, cutoff=0.8)
            if close:
                suggestion = f"TCU_{close[0]}_{key}".upper()
                raise ConfigError(f"unknown section {section!r} (did you mean {suggestion}?)", key=name)
            continue
        if section == "bus":
            raise ConfigError(
                "[[bus]] is a list of tables and cannot be set from the environment; set it in the file",
                key=name,
            )
        table_name, keys = section, KNOWN_KEYS[section]
        if key not in keys:
            for sub in (s for s in KNOWN_KEYS if s.startswith(f"{section}.")):
                prefix = sub.split(".", 1)[1] + "_"
                if key.startswith(prefix) and key[len(prefix) :] in KNOWN_KEYS[sub]:
                    table_name, key, keys = sub, key[len(prefix) :], KNOWN_KEYS[sub]
                    break
            else:
                close = difflib.get_close_matches(name, _env_names(section), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ConfigError(f"unknown key {key!r} of [{section}]{hint}", key=name)
        kind = keys[key]
        if kind is dict:
            raise ConfigError(f"is a table: set TCU_{table_name}_{key}_<KEY>".upper(), key=name)
        value = _env_value(raw, kind, name)
        table: Any = doc
        for part in table_name.split("."):
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ConfigError(f"must be a table (to take {name})", key=table_name)
        table[key] = value


def load_agent_config(
    path: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """Load and check the agent configuration; errors name the file and key."""
    path = Path(path)
    doc = read_config_document(path)
    try:
        return build_agent_config(doc, path, env=env, overrides=overrides)
    except ConfigError as exc:
        if exc.path is None:
            raise ConfigError(str(exc), path=str(path)) from exc.__cause__
        raise


def read_config_document(path: Path) -> dict[str, Any]:
    """The agent configuration file's TOML document; ConfigError naming the file when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError("file not found", path=str(path)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path=str(path)) from exc
    return parse_toml(text, lambda detail, _line: ConfigError(f"not valid TOML: {detail}", path=str(path)))


def build_agent_config(
    doc: dict[str, Any],
    source: Path,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """The checked configuration of a TOML document read from ``source`` (relative paths resolve
    beside it), after ``TCU_*`` variables from ``env`` and ``overrides`` (``"section.key"``).

    ``doc`` is modified (env and overrides are applied to it). Errors are ConfigErrors naming the
    key (or the variable); :func:`load_agent_config` adds the file.
    """
    if env is not None:
        _apply_env(doc, env)
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        doc.setdefault(section, {})[key] = value
    return _build(doc, source.resolve().parent, source, env)


def _build(doc: dict[str, Any], base: Path, source: Path, env: Mapping[str, str] | None) -> AgentConfig:
    check_keys(doc, SECTIONS, None, what="section")
    vehicle = _get(doc, "vehicle", "vehicle", dict)
    check_keys(vehicle, KNOWN_KEYS["vehicle"], "vehicle")
    vehicle_id = _get(vehicle, "id", "vehicle.id", str)
    if not vehicle_id.strip():
        raise ConfigError("must not be empty", key="vehicle.id")

    raw_buses = _get(doc, "bus", "bus", list)
    if not raw_buses:
        raise ConfigError("at least one [[bus]] is needed", key="bus")
    buses: list[BusConfig] = []
    for i, raw in enumerate(raw_buses):
        where = f"bus[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError("must be a table", key=where)
        check_keys(raw, KNOWN_KEYS["bus"], where)
        name = _get(raw, "name", f"{where}.name", str)
        if any(b.name == name for b in buses):
            raise ConfigError(f"bus name {name!r} is used twice", key=f"{where}.name")
        dbc_raw = _get(raw, "dbc", f"{where}.dbc", list)
        if not dbc_raw or not all(isinstance(d, str) for d in dbc_raw):
            raise ConfigError("must be a non-empty list of DBC file paths", key=f"{where}.dbc")
        dbc = tuple(_path(base, d) for d in dbc_raw)
        for d in dbc:
            if not d.is_file():
                raise ConfigError(f"DBC file not found: {d}", key=f"{where}.dbc")
        buses.append(
            BusConfig(
                name=name,
                interface=_get(raw, "interface", f"{where}.interface", str),
                channel=_get(raw, "channel", f"{where}.channel", str, name),
                dbc=dbc,
                options=dict(_get(raw, "options", f"{where}.options", dict, {})),
                bitrate=_get(raw, "bitrate", f"{where}.bitrate", int, None),
                retry_initial_s=_get(raw, "retry_initial_s", f"{where}.retry_initial_s", float, 1.0),
                retry_max_s=_get(raw, "retry_max_s", f"{where}.retry_max_s", float, 30.0),
                j1939=_get(raw, "j1939", f"{where}.j1939", bool, False),
            )
        )
        bus = buses[-1]
        if not 0 < bus.retry_initial_s <= bus.retry_max_s:
            raise ConfigError(
                f"retry_initial_s ({bus.retry_initial_s}) must be positive and at most retry_max_s"
                f" ({bus.retry_max_s})",
                key=f"{where}.retry_initial_s",
            )

    signals = _get(doc, "signals", "signals", dict)
    check_keys(signals, KNOWN_KEYS["signals"], "signals")
    mapping = _path(base, _get(signals, "mapping", "signals.mapping", str))
    if not mapping.is_file():
        raise ConfigError(f"mapping file not found: {mapping}", key="signals.mapping")

    up = _get(doc, "uplink", "uplink", dict, {})
    check_keys(up, KNOWN_KEYS["uplink"], "uplink")
    tls_raw = _get(up, "tls", "uplink.tls", dict, None)
    insecure = _get(up, "insecure", "uplink.insecure", bool, False)
    tls = None
    if tls_raw is not None:
        check_keys(tls_raw, KNOWN_KEYS["uplink.tls"], "uplink.tls")
        tls = TlsConfig(
            ca_cert=_path(base, _get(tls_raw, "ca_cert", "uplink.tls.ca_cert", str)),
            cert=_path(base, _get(tls_raw, "cert", "uplink.tls.cert", str)),
            key=_path(base, _get(tls_raw, "key", "uplink.tls.key", str)),
            server_name=_get(tls_raw, "server_name", "uplink.tls.server_name", str, None),
        )
    if tls is None and not insecure:
        raise ConfigError(
            "no [uplink.tls] given: set ca_cert, cert and key (mTLS), or insecure = true for a test setup",
            key="uplink.tls",
        )
    defaults = UplinkConfig()
    uplink = UplinkConfig(
        target=_get(up, "target", "uplink.target", str, defaults.target),
        insecure=insecure,
        tls=tls,
        connect_timeout_s=_get(up, "connect_timeout_s", "uplink.connect_timeout_s", float, 10.0),
        backoff_initial_s=_get(up, "backoff_initial_s", "uplink.backoff_initial_s", float, 0.2),
        backoff_max_s=_get(up, "backoff_max_s", "uplink.backoff_max_s", float, defaults.backoff_max_s),
        keepalive_s=_get(up, "keepalive_s", "uplink.keepalive_s", float, 45.0),
        ack_timeout_s=_get(up, "ack_timeout_s", "uplink.ack_timeout_s", float, defaults.ack_timeout_s),
        max_unacked_batches=_get(up, "max_unacked_batches", "uplink.max_unacked_batches", int, 10_000),
        drain_timeout_s=_get(up, "drain_timeout_s", "uplink.drain_timeout_s", float, 15.0),
    )
    if not 30.0 <= uplink.keepalive_s <= 600.0:
        raise ConfigError("must be between 30 and 600 seconds (cellular links)", key="uplink.keepalive_s")
    for key in ("connect_timeout_s", "backoff_initial_s", "backoff_max_s"):
        if not getattr(uplink, key) > 0:
            raise ConfigError(f"must be positive, got {getattr(uplink, key)}", key=f"uplink.{key}")
    if uplink.ack_timeout_s < 0:
        raise ConfigError(
            f"must not be negative (0: off), got {uplink.ack_timeout_s}", key="uplink.ack_timeout_s"
        )
    if uplink.drain_timeout_s < 0:
        raise ConfigError(f"must not be negative, got {uplink.drain_timeout_s}", key="uplink.drain_timeout_s")

    b = _get(doc, "batch", "batch", dict, {})
    check_keys(b, KNOWN_KEYS["batch"], "batch")
    batch = BatchConfig(
        max_samples=_get(b, "max_samples", "batch.max_samples", int, 5_000),
        max_age_ms=_get(b, "max_age_ms", "batch.max_age_ms", int, 1000),
    )
    if batch.max_samples < 1 or batch.max_age_ms < 1:
        raise ConfigError("max_samples and max_age_ms must be positive", key="batch")
    fr = _get(doc, "frames", "frames", dict, {})
    check_keys(fr, KNOWN_KEYS["frames"], "frames")
    tick_ms = _get(fr, "tick_ms", "frames.tick_ms", int, 20)
    if not 1 <= tick_ms <= 1000:
        raise ConfigError(f"expected 1 to 1000 ms, got {tick_ms}", key="frames.tick_ms")
    buffer_frames = _get(fr, "buffer_frames", "frames.buffer_frames", int, 65_536)
    if buffer_frames < 1:
        raise ConfigError(
            f"expected a positive number of frames, got {buffer_frames}", key="frames.buffer_frames"
        )
    overflow = _get(fr, "overflow", "frames.overflow", str, "drop")
    if overflow not in ("drop", "block"):
        raise ConfigError(f"expected 'drop' or 'block', got {overflow!r}", key="frames.overflow")
    st = _get(doc, "state", "state", dict, {})
    check_keys(st, KNOWN_KEYS["state"], "state")
    state_raw = _get(st, "directory", "state.directory", str, None)
    state_dir = _path(base, state_raw) if state_raw is not None else state_directory(env)
    spool: SpoolSettings | None
    spool_origin: SpoolOrigin
    sp = _get(doc, "spool", "spool", dict, None)
    if sp is not None:
        check_keys(sp, KNOWN_KEYS["spool"], "spool")
    if sp is None:
        # No [spool]: durable by default, in the state directory.
        spool, spool_origin = SpoolSettings(directory=state_dir / "spool"), "default"
    elif not _get(sp, "enabled", "spool.enabled", bool, True):
        spool, spool_origin = None, "disabled"
    else:
        sd = SpoolSettings(directory=Path("."))
        directory = _get(sp, "directory", "spool.directory", str, None)
        spool_origin = "configured"
        spool = SpoolSettings(
            directory=_path(base, directory) if directory is not None else state_dir / "spool",
            durability=_get(sp, "durability", "spool.durability", str, sd.durability),
            max_bytes=_get(sp, "max_bytes", "spool.max_bytes", int, sd.max_bytes),
            max_age_s=_get(sp, "max_age_s", "spool.max_age_s", float, sd.max_age_s),
            segment_bytes=_get(sp, "segment_bytes", "spool.segment_bytes", int, sd.segment_bytes),
            compression=_get(sp, "compression", "spool.compression", str, sd.compression),
            backlog_bytes=_get(sp, "backlog_bytes", "spool.backlog_bytes", int, sd.backlog_bytes),
            on_damage=_get(sp, "on_damage", "spool.on_damage", str, sd.on_damage),
        )
    campaigns = None
    cp = _get(doc, "campaigns", "campaigns", dict, None)
    if cp is not None:
        check_keys(cp, KNOWN_KEYS["campaigns"], "campaigns")
        file = _get(cp, "file", "campaigns.file", str, None)
        campaigns = CampaignSettings(
            file=_path(base, file) if file is not None else None,
            memory_budget_bytes=_get(
                cp, "memory_budget_bytes", "campaigns.memory_budget_bytes", int, 16 << 20
            ),
            default_periodic=_get(cp, "default_periodic", "campaigns.default_periodic", bool, True),
        )
        if campaigns.file is not None and not campaigns.file.is_file():
            raise ConfigError(f"campaign file not found: {campaigns.file}", key="campaigns.file")
    commands = None
    cm = _get(doc, "commands", "commands", dict, None)
    if cm is not None:
        check_keys(cm, KNOWN_KEYS["commands"], "commands")
        nonce = _get(cm, "nonce_store", "commands.nonce_store", str, None)
        if nonce is not None and not nonce.strip():
            raise ConfigError('must be a file path or "memory"', key="commands.nonce_store")
        nonce_store: Path | Literal["memory"]
        if nonce is None:
            # Beside a configured spool (as before the default spool), else in the state directory.
            beside_spool = spool is not None and spool_origin == "configured"
            nonce_store = (spool.directory if spool is not None and beside_spool else state_dir) / "nonces"
        elif nonce == "memory":
            nonce_store = "memory"
        else:
            nonce_store = _path(base, nonce)
        commands = CommandSettings(
            verify_key=_path(base, _get(cm, "verify_key", "commands.verify_key", str)),
            nonce_store=nonce_store,
            max_skew_s=_get(cm, "max_skew_s", "commands.max_skew_s", float, 30.0),
        )
    raw_connectivity = _get(doc, "connectivity", "connectivity", dict, None)
    connectivity = None if raw_connectivity is None else parse_connectivity(raw_connectivity, base=base)
    metrics_listen = None
    mt = _get(doc, "metrics", "metrics", dict, None)
    if mt is not None:
        check_keys(mt, KNOWN_KEYS["metrics"], "metrics")
        metrics_listen = _get(mt, "listen", "metrics.listen", str, DEFAULT_METRICS_LISTEN)
        host, sep, port = metrics_listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"expected host:port, got {metrics_listen!r}", key="metrics.listen")
    return AgentConfig(
        vehicle_id=vehicle_id,
        buses=tuple(buses),
        mapping=mapping,
        uplink=uplink,
        batch=batch,
        reader_batch_ms=tick_ms,
        tick_ms=tick_ms,
        frame_buffer_frames=buffer_frames,
        frame_overflow="block" if overflow == "block" else "drop",
        spool=spool,
        campaigns=campaigns,
        commands=commands,
        connectivity=connectivity,
        source=source,
        v2x=_v2x(_get(doc, "v2x", "v2x", dict, None), base, vehicle_id),
        metrics_listen=metrics_listen,
        state_dir=state_dir,
        spool_origin=spool_origin,
    )


_V2X_ROLES = {
    "default",
    "publicTransport",
    "specialTransport",
    "dangerousGoods",
    "roadWork",
    "rescue",
    "emergency",
    "safetyCar",
    "agriculture",
    "commercial",
    "military",
    "roadOperator",
    "taxi",
}
_TRAFFIC_DIRECTIONS = {"allTrafficDirections", "upstreamTraffic", "downstreamTraffic", "oppositeTraffic"}


def _check_range(value: float, low: float, high: float, key: str) -> None:
    if not low <= value <= high:
        raise ConfigError(f"must be between {low:g} and {high:g}, got {value!r}", key=key)


def _v2x_trigger(raw: Any, where: str) -> V2xTriggerSettings:
    if not isinstance(raw, dict):
        raise ConfigError("must be a table", key=where)
    check_keys(raw, V2X_TRIGGER_KEYS, where)
    d = V2xTriggerSettings("", "", 0)
    condition = _get(raw, "condition", f"{where}.condition", str)  # compiled by the agent (tcu.agent.v2x)
    t = V2xTriggerSettings(
        name=_get(raw, "name", f"{where}.name", str),
        condition=condition,
        cause_code=_get(raw, "cause", f"{where}.cause", int),
        sub_cause_code=_get(raw, "sub_cause", f"{where}.sub_cause", int, 0),
        validity_s=_get(raw, "validity_s", f"{where}.validity_s", int, d.validity_s),
        relevance_m=_get(raw, "relevance_m", f"{where}.relevance_m", float, d.relevance_m),
        traffic_direction=_get(
            raw, "traffic_direction", f"{where}.traffic_direction", str, d.traffic_direction
        ),
        hold_ms=_get(raw, "hold_ms", f"{where}.hold_ms", int, d.hold_ms),
        release_ms=_get(raw, "release_ms", f"{where}.release_ms", int, d.release_ms),
        repetition_ms=_get(raw, "repetition_ms", f"{where}.repetition_ms", int, d.repetition_ms),
        update_s=_get(raw, "update_s", f"{where}.update_s", float, d.update_s),
        information_quality=_get(raw, "information_quality", f"{where}.information_quality", int, 3),
    )
    if not t.name.strip():
        raise ConfigError("must not be empty", key=f"{where}.name")
    _check_range(t.cause_code, 0, 255, f"{where}.cause")
    _check_range(t.sub_cause_code, 0, 255, f"{where}.sub_cause")
    _check_range(t.validity_s, 1, 86400, f"{where}.validity_s")
    _check_range(t.relevance_m, 1, 100_000, f"{where}.relevance_m")
    _check_range(t.hold_ms, 0, 3_600_000, f"{where}.hold_ms")
    _check_range(t.release_ms, 0, 3_600_000, f"{where}.release_ms")
    _check_range(t.repetition_ms, 100, 10_000, f"{where}.repetition_ms")
    _check_range(t.information_quality, 0, 7, f"{where}.information_quality")
    if not 0 < t.update_s < t.validity_s:
        raise ConfigError(
            "must be positive and shorter than validity_s (so the event never lapses)",
            key=f"{where}.update_s",
        )
    if t.traffic_direction not in _TRAFFIC_DIRECTIONS:
        raise ConfigError(f"must be one of {sorted(_TRAFFIC_DIRECTIONS)}", key=f"{where}.traffic_direction")
    return t


def _v2x(raw: dict[str, Any] | None, base: Path, vehicle_id: str) -> V2xSettings | None:
    if raw is None:
        return None
    check_keys(raw, KNOWN_KEYS["v2x"], "v2x")
    broker = _get(raw, "broker", "v2x.broker", str)
    host, sep, port_text = broker.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"must be host:port, got {broker!r}", key="v2x.broker")
    tls_raw = _get(raw, "tls", "v2x.tls", dict, None)
    tls = None
    if tls_raw is not None:
        check_keys(tls_raw, KNOWN_KEYS["v2x.tls"], "v2x.tls")
        tls = TlsConfig(
            ca_cert=_path(base, _get(tls_raw, "ca_cert", "v2x.tls.ca_cert", str)),
            cert=_path(base, _get(tls_raw, "cert", "v2x.tls.cert", str)),
            key=_path(base, _get(tls_raw, "key", "v2x.tls.key", str)),
        )
    d = V2xSettings(host="", port=1, station_id=0, tls=None, client_id="")
    subscribe = _get(raw, "subscribe", "v2x.subscribe", list, list(d.subscribe))
    if not subscribe or any(t not in ("cam", "denm") for t in subscribe):
        raise ConfigError('must be a non-empty list of "cam" and "denm"', key="v2x.subscribe")
    length = _get(raw, "length_m", "v2x.length_m", float, None)
    width = _get(raw, "width_m", "v2x.width_m", float, None)
    raw_triggers = _get(raw, "trigger", "v2x.trigger", list, None)
    triggers = d.triggers
    if raw_triggers is not None:
        triggers = tuple(_v2x_trigger(t, f"v2x.trigger[{i}]") for i, t in enumerate(raw_triggers))
        names = [t.name for t in triggers]
        if len(set(names)) != len(names):
            raise ConfigError(f"trigger names must be unique, got {names}", key="v2x.trigger")
    settings = V2xSettings(
        host=host,
        port=int(port_text),
        station_id=_get(raw, "station_id", "v2x.station_id", int),
        tls=tls,
        client_id=_get(raw, "client_id", "v2x.client_id", str, vehicle_id),
        station_type=_get(raw, "station_type", "v2x.station_type", int, d.station_type),
        vehicle_role=_get(raw, "vehicle_role", "v2x.vehicle_role", str, d.vehicle_role),
        length_m=length,
        width_m=width,
        prefix=_get(raw, "prefix", "v2x.prefix", str, d.prefix),
        publish_level=_get(raw, "publish_level", "v2x.publish_level", int, d.publish_level),
        subscribe_level=_get(raw, "subscribe_level", "v2x.subscribe_level", int, d.subscribe_level),
        subscribe=tuple(subscribe),
        cam=_get(raw, "cam", "v2x.cam", bool, d.cam),
        cam_min_interval_ms=_get(raw, "cam_min_interval_ms", "v2x.cam_min_interval_ms", int, 100),
        cam_max_interval_ms=_get(raw, "cam_max_interval_ms", "v2x.cam_max_interval_ms", int, 1000),
        standstill_kmh=_get(raw, "standstill_kmh", "v2x.standstill_kmh", float, d.standstill_kmh),
        ahead_deg=_get(raw, "ahead_deg", "v2x.ahead_deg", float, d.ahead_deg),
        same_direction_deg=_get(raw, "same_direction_deg", "v2x.same_direction_deg", float, 60.0),
        session_expiry_s=_get(raw, "session_expiry_s", "v2x.session_expiry_s", int, d.session_expiry_s),
        queue_size=_get(raw, "queue_size", "v2x.queue_size", int, d.queue_size),
        reconnect_max_s=_get(raw, "reconnect_max_s", "v2x.reconnect_max_s", float, d.reconnect_max_s),
        drain_timeout_s=_get(raw, "drain_timeout_s", "v2x.drain_timeout_s", float, d.drain_timeout_s),
        triggers=triggers,
        triggers_configured=raw_triggers is not None,
    )
    _check_range(settings.station_id, 0, 0xFFFFFFFF, "v2x.station_id")
    _check_range(settings.station_type, 0, 255, "v2x.station_type")
    if settings.vehicle_role not in _V2X_ROLES:
        raise ConfigError(f"must be one of {sorted(_V2X_ROLES)}", key="v2x.vehicle_role")
    if length is not None:
        _check_range(length, 0.1, 102.2, "v2x.length_m")
    if width is not None:
        _check_range(width, 0.1, 6.1, "v2x.width_m")
    if not 1 <= settings.subscribe_level <= settings.publish_level <= 23:
        raise ConfigError("need 1 <= subscribe_level <= publish_level <= 23", key="v2x.subscribe_level")
    if not 100 <= settings.cam_min_interval_ms <= settings.cam_max_interval_ms <= 1000:
        raise ConfigError(
            "need 100 <= cam_min_interval_ms <= cam_max_interval_ms <= 1000 (ETSI T_GenCamMin/Max)",
            key="v2x.cam_min_interval_ms",
        )
    if any(c in settings.prefix for c in "+#") or not settings.prefix or settings.prefix.startswith("$"):
        raise ConfigError("must be topic levels without wildcards", key="v2x.prefix")
    _check_range(settings.queue_size, 2, 1_000_000, "v2x.queue_size")
    _check_range(settings.session_expiry_s, 0, 0xFFFFFFFF, "v2x.session_expiry_s")
    return settings
