"""DBC → VSS mapping files and the signal catalog built from them.

A mapping file ties DBC signals to VSS-style names::

    version = 1
    [[signal]]
    name = "Vehicle.Speed"      # VSS name, unique in the file
    message = "ESP_Speed"       # DBC message name
    signal = "VehicleSpeed"     # DBC signal name
    period_ms = 100             # sampling period of the default periodic campaign
    bus = "can0"                # optional: default is the one bus whose DBC has the message
    unit = "km/h"               # optional: default is the DBC unit

:func:`build_catalog` resolves every entry against the buses' DBC databases and
gives each signal a dense id. Errors name the file, the line of the entry's
``[[signal]]`` header and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcu.errors import MappingError
from tcu.tomlutil import parse_toml, toml_error_line

__all__ = [
    "Catalog",
    "ExtraSignal",
    "MappingEntry",
    "SignalSpec",
    "build_catalog",
    "catalog_hash",
    "load_mapping",
    "toml_error_line",
]

_VSS_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*(\.[A-Za-z0-9_]+)+$")


@dataclass(frozen=True, slots=True)
class MappingEntry:
    name: str
    message: str
    signal: str
    period_ms: int
    bus: str | None
    unit: str | None
    line: int


@dataclass(frozen=True, slots=True)
class SignalSpec:
    """One signal of the catalog: where it comes from and how it is sampled."""

    signal_id: int
    name: str
    unit: str
    bus: str
    message: str
    signal: str
    period_ms: int
    resolution: float
    value_type: str = "double"
    """``"double"`` (numbers) or ``"string"`` (text such as an ICCID)."""
    origin: str = ""
    """For signals that do not come from CAN: who produces them (e.g. ``modem``)."""

    @property
    def source(self) -> str:
        if self.origin:
            return self.origin
        return f"{self.bus}/{self.message}.{self.signal}"


@dataclass(frozen=True, slots=True)
class ExtraSignal:
    """A signal produced by the agent itself rather than decoded from CAN (modem, eSIM, spool)."""

    name: str
    unit: str
    value_type: str  # "double" or "string"
    origin: str


@dataclass(frozen=True, slots=True)
class Catalog:
    signals: tuple[SignalSpec, ...]
    catalog_id: str

    def by_name(self) -> dict[str, SignalSpec]:
        return {s.name: s for s in self.signals}


def load_mapping(path: str | Path) -> list[MappingEntry]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(f"cannot read: {exc.strerror}", path=str(path)) from exc
    doc = parse_toml(
        text, lambda detail, line: MappingError(f"not valid TOML: {detail}", path=str(path), line=line)
    )
    header_lines = [i + 1 for i, ln in enumerate(text.splitlines()) if ln.strip().startswith("[[signal]]")]
    if doc.get("version") != 1:
        raise MappingError(f"version must be 1, got {doc.get('version')!r}", path=str(path), line=1)
    raw = doc.get("signal")
    if not isinstance(raw, list) or not raw:
        raise MappingError("no [[signal]] entries", path=str(path))
    entries: list[MappingEntry] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        line = header_lines[i] if i < len(header_lines) else None

        def fail(problem: str, line: int | None = line) -> MappingError:
            return MappingError(problem, path=str(path), line=line)

        def text_field(key: str, required: bool = True, item: dict[str, Any] = item) -> str | None:
            value = item.get(key)
            if value is None and not required:
                return None
            if not isinstance(value, str) or not value:
                raise fail(f"signal entry needs {key!r} as a non-empty string, got {value!r}")
            return value

        name = text_field("name")
        message = text_field("message")
        signal = text_field("signal")
        assert name is not None and message is not None and signal is not None
        if not _VSS_NAME.match(name):
            raise fail(f"name {name!r} is not a VSS-style dotted name such as 'Vehicle.Speed'")
        if name in seen:
            raise fail(f"name {name!r} is mapped twice (first at line {seen[name]})")
        period = item.get("period_ms")
        if not isinstance(period, int) or isinstance(period, bool) or period <= 0:
            raise fail(f"{name}: period_ms must be a positive integer, got {period!r}")
        unknown = set(item) - {"name", "message", "signal", "period_ms", "bus", "unit"}
        if unknown:
            raise fail(f"{name}: unknown keys {sorted(unknown)}")
        seen[name] = line or 0
        entries.append(
            MappingEntry(
                name=name,
                message=message,
                signal=signal,
                period_ms=period,
                bus=text_field("bus", required=False),
                unit=text_field("unit", required=False),
                line=line or 0,
            )
        )
    return entries


def build_catalog(
    entries: Sequence[MappingEntry],
    databases: Mapping[str, Sequence[Any]],
    *,
    mapping_path: str | Path = "<mapping>",
    extra: Sequence[ExtraSignal] = (),
) -> Catalog:
    """Resolve mapping entries against ``{bus name: [cantools Database, ...]}``.

    ``extra`` signals (produced by the agent, not decoded from CAN) follow the
    mapped ones; their names must not collide with mapped names.
    """
    specs: list[SignalSpec] = []
    for entry in entries:

        def fail(problem: str, entry: MappingEntry = entry) -> MappingError:
            return MappingError(problem, path=str(mapping_path), line=entry.line)

        candidates = [entry.bus] if entry.bus is not None else list(databases)
        if entry.bus is not None and entry.bus not in databases:
            raise fail(f"{entry.name}: bus {entry.bus!r} is not configured (buses: {sorted(databases)})")
        found: list[tuple[str, Any]] = []
        for bus in candidates:
            for db in databases[bus]:
                try:
                    msg = db.get_message_by_name(entry.message)
                except KeyError:
                    continue
                found.append((bus, msg))
                break
        if not found:
            raise fail(f"{entry.name}: message {entry.message!r} is in no DBC of bus(es) {candidates}")
        if len(found) > 1:
            raise fail(
                f"{entry.name}: message {entry.message!r} exists on buses {[b for b, _ in found]}; "
                "set bus = ... to choose one"
            )
        bus, msg = found[0]
        try:
            sig = msg.get_signal_by_name(entry.signal)
        except KeyError:
            raise fail(f"{entry.name}: message {entry.message!r} has no signal {entry.signal!r}") from None
        specs.append(
            SignalSpec(
                signal_id=len(specs) + 1,
                name=entry.name,
                unit=entry.unit if entry.unit is not None else (sig.unit or ""),
                bus=bus,
                message=msg.name,
                signal=sig.name,
                period_ms=entry.period_ms,
                resolution=float(sig.scale),
            )
        )
    names = {s.name for s in specs}
    for x in extra:
        if x.value_type not in ("double", "string"):
            raise MappingError(f"{x.name}: value type must be double or string, got {x.value_type!r}")
        if x.name in names:
            raise MappingError(
                f"{x.name}: produced by {x.origin} and also mapped from CAN", path=str(mapping_path)
            )
        names.add(x.name)
        specs.append(
            SignalSpec(
                signal_id=len(specs) + 1,
                name=x.name,
                unit=x.unit,
                bus="",
                message="",
                signal="",
                period_ms=0,
                resolution=0.0,
                value_type=x.value_type,
                origin=x.origin,
            )
        )
    catalog_id = catalog_hash(
        (s.signal_id, s.name, s.unit, s.source, s.period_ms, s.resolution, s.value_type) for s in specs
    )
    return Catalog(tuple(specs), catalog_id)


def catalog_hash(signals: Iterable[tuple[int, str, str, str, int, float, str]]) -> str:
    """The catalog id: a hash of ``(signal_id, name, unit, source, period_ms, resolution,
    value_type)`` per signal, in catalog order (so a stored catalog can be checked against its id)."""
    canonical = json.dumps([list(row) for row in signals], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
