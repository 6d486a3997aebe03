"""One frozen configuration tree for the vehicle agent.

Layers, later wins: the TOML file, then ``TCU_<SECTION>_<KEY>`` environment
variables (read only by :func:`load_agent_config` when the CLI passes
``os.environ``), then CLI flags. Relative paths in the file are relative to
the file. Every error names the key::

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

    [spool]                       # optional; without it batches wait in memory only
    directory = "/var/lib/tcu/spool"
    durability = "power-loss"     # or "crash"
    max_bytes = 268435456
    max_age_s = 604800
    compression = "zstd"          # or "none"
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcu.errors import ConfigError

__all__ = [
    "AgentConfig",
    "BatchConfig",
    "BusConfig",
    "CampaignSettings",
    "CommandSettings",
    "SpoolSettings",
    "TlsConfig",
    "UplinkConfig",
    "load_agent_config",
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
    backoff_max_s: float = 30.0
    keepalive_s: float = 45.0
    max_unacked_batches: int = 10_000
    drain_timeout_s: float = 15.0


@dataclass(frozen=True, slots=True)
class BatchConfig:
    max_samples: int = 5_000
    max_age_ms: int = 1000


@dataclass(frozen=True, slots=True)
class SpoolSettings:
    """The ``[spool]`` section, checked again by :class:`tcu.spool.SpoolConfig`."""

    directory: Path
    durability: str = "power-loss"
    max_bytes: int = 256 * 1024 * 1024
    max_age_s: float | None = 7 * 24 * 3600.0
    segment_bytes: int = 4 * 1024 * 1024
    compression: str = "none"
    backlog_bytes: int = 16 * 1024 * 1024
    """Batches the disk cannot take wait in RAM up to this many bytes; then the oldest is dropped
    and reported upstream as a ``DataLoss``."""
    on_damage: str = "refuse"
    """A spool whose state cannot be rebuilt: ``"refuse"`` to start, or ``"start-fresh"`` (the
    old files are moved aside and the loss is reported upstream)."""


@dataclass(frozen=True, slots=True)
class CampaignSettings:
    """``[campaigns]``: collection campaigns besides (or instead of) the default periodic one."""

    file: Path | None = None
    memory_budget_bytes: int = 16 * 1024 * 1024
    default_periodic: bool = True


@dataclass(frozen=True, slots=True)
class CommandSettings:
    """``[commands]``: backend-signed commands on the Upload stream (campaign push, ...)."""

    verify_key: Path
    nonce_store: Path | None = None
    max_skew_s: float = 30.0


@dataclass(frozen=True, slots=True)
class AgentConfig:
    vehicle_id: str
    buses: tuple[BusConfig, ...]
    mapping: Path
    uplink: UplinkConfig
    batch: BatchConfig = BatchConfig()
    frame_queue_batches: int = 64
    reader_batch_frames: int = 512
    reader_batch_ms: int = 20
    spool: SpoolSettings | None = None
    campaigns: CampaignSettings | None = None
    commands: CommandSettings | None = None
    connectivity: Mapping[str, Any] | None = None
    """The raw ``[connectivity]`` table (modem, eSIM roaming), checked by :mod:`tcu.agent.connectivity`."""
    source: Path | None = None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


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


def _apply_env(doc: dict[str, Any], env: Mapping[str, str]) -> None:
    """``TCU_UPLINK_TARGET=host:port`` sets ``[uplink] target``; scalars only."""
    for name, raw in env.items():
        if not name.startswith("TCU_") or name.count("_") < 2:
            continue
        section, key = name[4:].lower().split("_", 1)
        table = doc.get(section)
        if not isinstance(table, dict) or key not in table:
            continue
        current = table[key]
        value: Any = raw
        if isinstance(current, bool):
            if raw.lower() not in _TRUE | _FALSE:
                raise ConfigError(f"must be true or false, got {raw!r}", key=name)
            value = raw.lower() in _TRUE
        elif isinstance(current, int):
            try:
                value = int(raw)
            except ValueError as exc:
                raise ConfigError(f"must be an integer, got {raw!r}", key=name) from exc
        elif isinstance(current, float):
            try:
                value = float(raw)
            except ValueError as exc:
                raise ConfigError(f"must be a number, got {raw!r}", key=name) from exc
        table[key] = value


def load_agent_config(
    path: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """Load and check the agent configuration; errors name the file and key."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError("file not found", path=str(path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=str(path)) from exc
    if env is not None:
        _apply_env(doc, env)
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        doc.setdefault(section, {})[key] = value
    try:
        return _build(doc, path.resolve().parent, path)
    except ConfigError as exc:
        if exc.path is None:
            raise ConfigError(str(exc), path=str(path)) from exc.__cause__
        raise


def _build(doc: dict[str, Any], base: Path, source: Path) -> AgentConfig:
    known = {"vehicle", "bus", "signals", "uplink", "batch", "spool", "campaigns", "commands", "connectivity"}
    for key in doc:
        if key not in known:
            raise ConfigError(f"unknown section (expected one of {sorted(known)})", key=key)
    vehicle = _get(doc, "vehicle", "vehicle", dict)
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
            )
        )

    signals = _get(doc, "signals", "signals", dict)
    mapping = _path(base, _get(signals, "mapping", "signals.mapping", str))
    if not mapping.is_file():
        raise ConfigError(f"mapping file not found: {mapping}", key="signals.mapping")

    up = _get(doc, "uplink", "uplink", dict, {})
    tls_raw = _get(up, "tls", "uplink.tls", dict, None)
    insecure = _get(up, "insecure", "uplink.insecure", bool, False)
    tls = None
    if tls_raw is not None:
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
        backoff_max_s=_get(up, "backoff_max_s", "uplink.backoff_max_s", float, 30.0),
        keepalive_s=_get(up, "keepalive_s", "uplink.keepalive_s", float, 45.0),
        max_unacked_batches=_get(up, "max_unacked_batches", "uplink.max_unacked_batches", int, 10_000),
        drain_timeout_s=_get(up, "drain_timeout_s", "uplink.drain_timeout_s", float, 15.0),
    )
    if not 30.0 <= uplink.keepalive_s <= 600.0:
        raise ConfigError("must be between 30 and 600 seconds (cellular links)", key="uplink.keepalive_s")

    b = _get(doc, "batch", "batch", dict, {})
    batch = BatchConfig(
        max_samples=_get(b, "max_samples", "batch.max_samples", int, 5_000),
        max_age_ms=_get(b, "max_age_ms", "batch.max_age_ms", int, 1000),
    )
    if batch.max_samples < 1 or batch.max_age_ms < 1:
        raise ConfigError("max_samples and max_age_ms must be positive", key="batch")
    spool = None
    sp = _get(doc, "spool", "spool", dict, None)
    if sp is not None:
        unknown = set(sp) - {
            "directory",
            "durability",
            "max_bytes",
            "max_age_s",
            "segment_bytes",
            "compression",
            "backlog_bytes",
            "on_damage",
        }
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}", key="spool")
        sd = SpoolSettings(directory=Path("."))
        spool = SpoolSettings(
            directory=_path(base, _get(sp, "directory", "spool.directory", str)),
            durability=_get(sp, "durability", "spool.durability", str, sd.durability),
            max_bytes=_get(sp, "max_bytes", "spool.max_bytes", int, sd.max_bytes),
            max_age_s=_get(sp, "max_age_s", "spool.max_age_s", float, sd.max_age_s),
            segment_bytes=_get(sp, "segment_bytes", "spool.segment_bytes", int, sd.segment_bytes),
            compression=_get(sp, "compression", "spool.compression", str, sd.compression),
            backlog_bytes=_get(sp, "backlog_bytes", "spool.backlog_bytes", int, sd.backlog_bytes),
            on_damage=_get(sp, "on_damage", "spool.on_damage", str, sd.on_damage),
        )
        if spool.backlog_bytes < 0:
            raise ConfigError(f"must be 0 or more, got {spool.backlog_bytes}", key="spool.backlog_bytes")
        if spool.on_damage not in ("refuse", "start-fresh"):
            raise ConfigError(
                f"must be 'refuse' or 'start-fresh', got {spool.on_damage!r}", key="spool.on_damage"
            )
    campaigns = None
    cp = _get(doc, "campaigns", "campaigns", dict, None)
    if cp is not None:
        unknown = set(cp) - {"file", "memory_budget_bytes", "default_periodic"}
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}", key="campaigns")
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
        unknown = set(cm) - {"verify_key", "nonce_store", "max_skew_s"}
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}", key="commands")
        nonce = _get(cm, "nonce_store", "commands.nonce_store", str, None)
        commands = CommandSettings(
            verify_key=_path(base, _get(cm, "verify_key", "commands.verify_key", str)),
            nonce_store=_path(base, nonce) if nonce is not None else None,
            max_skew_s=_get(cm, "max_skew_s", "commands.max_skew_s", float, 30.0),
        )
    return AgentConfig(
        vehicle_id=vehicle_id,
        buses=tuple(buses),
        mapping=mapping,
        uplink=uplink,
        batch=batch,
        spool=spool,
        campaigns=campaigns,
        commands=commands,
        connectivity=_get(doc, "connectivity", "connectivity", dict, None),
        source=source,
    )
