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

    [spool]                       # optional; without it batches wait in memory only
    directory = "/var/lib/tcu/spool"
    durability = "power-loss"     # or "crash"
    max_bytes = 268435456
    max_age_s = 604800
    compression = "zstd"          # or "none"
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tcu.errors import ConfigError

__all__ = [
    "CONNECTIVITY_KEYS",
    "KNOWN_KEYS",
    "AgentConfig",
    "BatchConfig",
    "BusConfig",
    "CampaignSettings",
    "CommandSettings",
    "SpoolSettings",
    "TlsConfig",
    "UplinkConfig",
    "check_keys",
    "default_nonce_store",
    "did_you_mean",
    "load_agent_config",
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
    metrics_listen: str | None = None
    """``[metrics] listen``: ``host:port`` of the Prometheus endpoint and ``/healthz`` (off without it)."""


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
}
"""The keys of ``[connectivity]`` (checked further by :mod:`tcu.agent.connectivity`)."""

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
        "max_unacked_batches": int,
        "drain_timeout_s": float,
    },
    "uplink.tls": {"ca_cert": str, "cert": str, "key": str, "server_name": str},
    "batch": {"max_samples": int, "max_age_ms": int},
    "spool": {
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
    "metrics": {"listen": str},
}
"""Every key the agent file may hold, per table (``uplink.tls`` is a subtable; ``bus`` is
``[[bus]]``, a list of tables). A key that is not here is refused by :func:`check_keys`."""

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
    """Where the agent keeps its state when no spool directory is configured.

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
        return _build(doc, path.resolve().parent, path, env)
    except ConfigError as exc:
        if exc.path is None:
            raise ConfigError(str(exc), path=str(path)) from exc.__cause__
        raise


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
        backoff_max_s=_get(up, "backoff_max_s", "uplink.backoff_max_s", float, 30.0),
        keepalive_s=_get(up, "keepalive_s", "uplink.keepalive_s", float, 45.0),
        max_unacked_batches=_get(up, "max_unacked_batches", "uplink.max_unacked_batches", int, 10_000),
        drain_timeout_s=_get(up, "drain_timeout_s", "uplink.drain_timeout_s", float, 15.0),
    )
    if not 30.0 <= uplink.keepalive_s <= 600.0:
        raise ConfigError("must be between 30 and 600 seconds (cellular links)", key="uplink.keepalive_s")
    for key in ("connect_timeout_s", "backoff_initial_s", "backoff_max_s"):
        if not getattr(uplink, key) > 0:
            raise ConfigError(f"must be positive, got {getattr(uplink, key)}", key=f"uplink.{key}")
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
    spool = None
    sp = _get(doc, "spool", "spool", dict, None)
    if sp is not None:
        check_keys(sp, KNOWN_KEYS["spool"], "spool")
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
            nonce_store = default_nonce_store(spool, env)
        elif nonce == "memory":
            nonce_store = "memory"
        else:
            nonce_store = _path(base, nonce)
        commands = CommandSettings(
            verify_key=_path(base, _get(cm, "verify_key", "commands.verify_key", str)),
            nonce_store=nonce_store,
            max_skew_s=_get(cm, "max_skew_s", "commands.max_skew_s", float, 30.0),
        )
    connectivity = _get(doc, "connectivity", "connectivity", dict, None)
    if connectivity is not None:
        check_keys(connectivity, CONNECTIVITY_KEYS, "connectivity")
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
        spool=spool,
        campaigns=campaigns,
        commands=commands,
        connectivity=connectivity,
        source=source,
        metrics_listen=metrics_listen,
    )
