"""Collection campaigns: what to collect, loaded from TOML.

A file holds one or more campaigns; each has exactly one of ``periodic``,
``on_change`` or ``condition``::

    [[campaign]]
    name = "hard_braking"
    version = 1
    priority = 50                # higher survives longer in the spool
    signals = ["Vehicle.Speed", "Vehicle.Acceleration.Longitudinal"]   # captured
    [campaign.condition]
    expression = "Vehicle.Acceleration.Longitudinal < -6"
    trigger = "rising_edge"      # or "always" (default rising_edge)
    min_trigger_interval_ms = 2000
    pre_trigger_ms = 10000
    post_trigger_ms = 5000
    raw_frames = [{bus = "can0", arbitration_id = 0x123}]   # optional

    [[campaign]]
    name = "minutely"
    version = 3
    signals = ["Vehicle.Speed", "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"]
    [campaign.periodic]
    period_ms = 60000            # every signal not in a group
    groups = [{signals = ["Vehicle.Speed"], period_ms = 1000}]

    [[campaign]]
    name = "speed_changes"
    version = 1
    signals = ["Vehicle.Speed"]
    [campaign.on_change]
    min_interval_ms = 500        # default 0
    deadband = {"Vehicle.Speed" = 0.5}   # absolute, per signal (default 0: any change)

A file with any error is refused as a whole; :class:`CampaignError` names the
file, the line (of the offending key, else of the entry's ``[[campaign]]``
header) and, for expressions, the column in the file. :func:`validate` checks
a set of campaigns against a signal catalog (unknown names are errors).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tcu.collect.expr import Expression, ExpressionError, ExprLimits, compile_expression
from tcu.errors import InputError
from tcu.signals.mapping import Catalog
from tcu.tomlutil import parse_toml

__all__ = [
    "MAX_POST_TRIGGER_MS",
    "MAX_PRE_TRIGGER_MS",
    "Campaign",
    "CampaignError",
    "Condition",
    "OnChange",
    "Periodic",
    "RawFrame",
    "SourceRef",
    "load_campaigns",
    "parse_campaigns",
    "validate",
]

MAX_PRE_TRIGGER_MS = 600_000
MAX_POST_TRIGGER_MS = 600_000
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class CampaignError(InputError):
    """A campaign file or set is wrong: ``path:line:column: problem``."""

    def __init__(
        self, problem: str, *, path: str | None = None, line: int | None = None, column: int | None = None
    ) -> None:
        super().__init__(problem, path=path, line=line)
        self.column = column
        where = path or "<campaigns>"
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        self.args = (f"{where}: {problem}",)


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a campaign was defined (for error messages)."""

    path: str
    line: int
    signals_line: int


@dataclass(frozen=True, slots=True)
class Periodic:
    """First sample per ``period_ms`` window of source time, per signal."""

    period_ms: tuple[tuple[str, int], ...]  # (signal, period) for every campaign signal

    def period_of(self, signal: str) -> int:
        return dict(self.period_ms)[signal]


@dataclass(frozen=True, slots=True)
class OnChange:
    """A sample is kept when it moved more than the deadband from the last kept one."""

    deadband: tuple[tuple[str, float], ...]  # (signal, absolute deadband) for every campaign signal
    min_interval_ms: int

    def deadband_of(self, signal: str) -> float:
        return dict(self.deadband)[signal]


@dataclass(frozen=True, slots=True)
class RawFrame:
    bus: str
    arbitration_id: int


@dataclass(frozen=True, slots=True)
class Condition:
    """Capture ``[trigger - pre, trigger + post]`` of the campaign's signals when ``expression`` fires."""

    expression: Expression
    trigger: Literal["rising_edge", "always"]
    min_trigger_interval_ms: int
    pre_trigger_ms: int
    post_trigger_ms: int
    raw_frames: tuple[RawFrame, ...] = ()
    expression_line: int = field(default=0, compare=False)
    expression_column: int = field(default=0, compare=False)  # file column of the expression's first char


Mode = Periodic | OnChange | Condition


@dataclass(frozen=True, slots=True)
class Campaign:
    name: str
    version: int
    priority: int
    signals: tuple[str, ...]
    mode: Mode
    source: SourceRef = field(default=SourceRef("<campaigns>", 0, 0), compare=False)

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.version)


# --------------------------------------------------------------------------- loading


def load_campaigns(path: str | Path, *, limits: ExprLimits | None = None) -> list[Campaign]:
    """Read and check one campaign file (not yet against a catalog: see :func:`validate`)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise CampaignError(f"cannot read: {exc.strerror}", path=str(file)) from exc
    except UnicodeDecodeError as exc:
        raise CampaignError(f"not UTF-8 text: {exc.reason}", path=str(file)) from exc
    return parse_campaigns(text, path=str(file), limits=limits)


def parse_campaigns(
    text: str, *, path: str = "<campaigns>", limits: ExprLimits | None = None
) -> list[Campaign]:
    """Parse campaign TOML text (e.g. pushed from the cloud); errors name ``path``."""
    doc = parse_toml(
        text, lambda detail, line: CampaignError(f"not valid TOML: {detail}", path=path, line=line)
    )
    lines = text.splitlines()
    unknown = set(doc) - {"campaign"}
    if unknown:
        raise CampaignError(
            f"unknown top-level keys {sorted(unknown)} (campaigns go in [[campaign]] tables)",
            path=path,
            line=1,
        )
    raw = doc.get("campaign")
    if not isinstance(raw, list) or not raw:
        raise CampaignError("no [[campaign]] entries", path=path, line=1)
    headers = [i + 1 for i, ln in enumerate(lines) if ln.strip().startswith("[[campaign]]")]
    campaigns: list[Campaign] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        start = headers[i] if i < len(headers) else 1
        end = headers[i + 1] if i + 1 < len(headers) else len(lines) + 1
        entry = _Entry(path, lines, start, end, limits or ExprLimits())
        campaign = entry.parse(item)
        if campaign.name in seen:
            raise entry.fail(
                f"campaign {campaign.name!r} is defined twice (first at line {seen[campaign.name]})"
            )
        seen[campaign.name] = start
        campaigns.append(campaign)
    return campaigns


@dataclass(slots=True)
class _Entry:
    path: str
    lines: list[str]
    start: int
    end: int
    limits: ExprLimits

    def line_of(self, key: str) -> int:
        pattern = re.compile(rf"(^|[{{,\s]){re.escape(key)}\s*=")
        for n in range(self.start, self.end):
            if pattern.search(self.lines[n - 1]):
                return n
        return self.start

    def fail(self, problem: str, key: str | None = None, column: int | None = None) -> CampaignError:
        line = self.line_of(key) if key is not None else self.start
        return CampaignError(problem, path=self.path, line=line, column=column)

    def integer(self, table: dict[str, Any], key: str, where: str, default: int | None, low: int) -> int:
        value = table.get(key, default)
        if value is None:
            raise self.fail(f"{where}needs {key!r} (an integer)", key)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise self.fail(f"{where}{key} must be an integer >= {low}, got {value!r}", key)
        return value

    def parse(self, item: Any) -> Campaign:
        if not isinstance(item, dict):
            raise self.fail("a campaign must be a table")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise self.fail(
                f"campaign needs 'name' made of letters, digits, '_', '.', '-', got {name!r}", "name"
            )
        where = f"campaign {name!r}: "
        unknown = set(item) - {"name", "version", "priority", "signals", "periodic", "on_change", "condition"}
        if unknown:
            raise self.fail(f"{where}unknown keys {sorted(unknown)}", sorted(unknown)[0])
        version = self.integer(item, "version", where, None, 1)
        priority = self.integer(item, "priority", where, 0, 0)
        signals = item.get("signals")
        if not isinstance(signals, list) or not signals or not all(isinstance(s, str) and s for s in signals):
            raise self.fail(
                f"{where}'signals' must be a non-empty list of VSS names, got {signals!r}", "signals"
            )
        dupes = sorted({s for s in signals if signals.count(s) > 1})
        if dupes:
            raise self.fail(f"{where}signals listed twice: {dupes}", "signals")
        modes = [k for k in ("periodic", "on_change", "condition") if k in item]
        if len(modes) != 1:
            raise self.fail(
                f"{where}needs exactly one of [campaign.periodic], [campaign.on_change], "
                f"[campaign.condition]; got {modes or 'none'}"
            )
        kind = modes[0]
        table = item[kind]
        if not isinstance(table, dict):
            raise self.fail(f"{where}{kind} must be a table", kind)
        where = f"campaign {name!r} {kind}: "
        mode: Mode
        if kind == "periodic":
            mode = self.periodic(table, tuple(signals), where)
        elif kind == "on_change":
            mode = self.on_change(table, tuple(signals), where)
        else:
            mode = self.condition(table, where)
        source = SourceRef(self.path, self.start, self.line_of("signals"))
        return Campaign(name, version, priority, tuple(signals), mode, source)

    def periodic(self, table: dict[str, Any], signals: tuple[str, ...], where: str) -> Periodic:
        unknown = set(table) - {"period_ms", "groups"}
        if unknown:
            raise self.fail(f"{where}unknown keys {sorted(unknown)}", sorted(unknown)[0])
        default = self.integer(table, "period_ms", where, 0, 1) if "period_ms" in table else None
        groups = table.get("groups", [])
        if not isinstance(groups, list):
            raise self.fail(f"{where}groups must be a list of {{signals = [...], period_ms = N}}", "groups")
        periods: dict[str, int] = {}
        for g, group in enumerate(groups):
            gwhere = f"{where}group {g + 1}: "
            if not isinstance(group, dict) or set(group) != {"signals", "period_ms"}:
                raise self.fail(
                    f"{gwhere}must be {{signals = [...], period_ms = N}}, got {group!r}", "groups"
                )
            period = self.integer(group, "period_ms", gwhere, None, 1)
            members = group["signals"]
            if not isinstance(members, list) or not members:
                raise self.fail(f"{gwhere}signals must be a non-empty list", "groups")
            for s in members:
                if s not in signals:
                    raise self.fail(f"{gwhere}{s!r} is not in the campaign's signals", "groups")
                if s in periods:
                    raise self.fail(f"{gwhere}{s!r} is already in another group", "groups")
                periods[s] = period
        missing = [s for s in signals if s not in periods]
        if missing and default is None:
            raise self.fail(f"{where}no period_ms for {missing} (set period_ms or put them in a group)")
        return Periodic(tuple((s, periods.get(s, default or 0)) for s in signals))

    def on_change(self, table: dict[str, Any], signals: tuple[str, ...], where: str) -> OnChange:
        unknown = set(table) - {"min_interval_ms", "deadband"}
        if unknown:
            raise self.fail(f"{where}unknown keys {sorted(unknown)}", sorted(unknown)[0])
        interval = self.integer(table, "min_interval_ms", where, 0, 0)
        raw = table.get("deadband", {})
        if not isinstance(raw, dict):
            raise self.fail(f"{where}deadband must be a table of signal = absolute deadband", "deadband")
        for s, band in raw.items():
            if s not in signals:
                raise self.fail(
                    f"{where}deadband names {s!r}, which is not in the campaign's signals", "deadband"
                )
            if not isinstance(band, int | float) or isinstance(band, bool) or not 0 <= band < float("inf"):
                raise self.fail(f"{where}deadband of {s!r} must be a number >= 0, got {band!r}", "deadband")
        return OnChange(tuple((s, float(raw.get(s, 0.0))) for s in signals), interval)

    def condition(self, table: dict[str, Any], where: str) -> Condition:
        known = {
            "expression",
            "trigger",
            "min_trigger_interval_ms",
            "pre_trigger_ms",
            "post_trigger_ms",
            "raw_frames",
        }
        unknown = set(table) - known
        if unknown:
            raise self.fail(f"{where}unknown keys {sorted(unknown)}", sorted(unknown)[0])
        text = table.get("expression")
        if not isinstance(text, str):
            raise self.fail(f"{where}needs 'expression' as a string, got {text!r}", "expression")
        line = self.line_of("expression")
        found = self.lines[line - 1].find(text) if text else -1
        base = found if found >= 0 else 0  # file column = base + column in the expression
        try:
            expression = compile_expression(text, self.limits)
        except ExpressionError as exc:
            caret = exc.expression and "\n    " + exc.expression + "\n    " + " " * (exc.column - 1) + "^"
            inside = "" if found >= 0 else f" (column {exc.column} of the expression)"
            raise CampaignError(
                f"{where}expression: {exc.problem}{inside}{caret}",
                path=self.path,
                line=line,
                column=base + exc.column,
            ) from exc
        trigger = table.get("trigger", "rising_edge")
        if trigger not in ("rising_edge", "always"):
            raise self.fail(f"{where}trigger must be 'rising_edge' or 'always', got {trigger!r}", "trigger")
        interval = self.integer(table, "min_trigger_interval_ms", where, 0, 0)
        pre = self.integer(table, "pre_trigger_ms", where, 0, 0)
        post = self.integer(table, "post_trigger_ms", where, 0, 0)
        if pre > MAX_PRE_TRIGGER_MS:
            raise self.fail(
                f"{where}pre_trigger_ms {pre} is over the limit of {MAX_PRE_TRIGGER_MS}", "pre_trigger_ms"
            )
        if post > MAX_POST_TRIGGER_MS:
            raise self.fail(
                f"{where}post_trigger_ms {post} is over the limit of {MAX_POST_TRIGGER_MS}", "post_trigger_ms"
            )
        frames_raw = table.get("raw_frames", [])
        if not isinstance(frames_raw, list):
            raise self.fail(
                f"{where}raw_frames must be a list of {{bus = ..., arbitration_id = ...}}", "raw_frames"
            )
        frames: list[RawFrame] = []
        for f in frames_raw:
            ok = isinstance(f, dict) and set(f) == {"bus", "arbitration_id"}
            bus = f.get("bus") if ok else None
            arb = f.get("arbitration_id") if ok else None
            if (
                not isinstance(bus, str)
                or not bus
                or not isinstance(arb, int)
                or isinstance(arb, bool)
                or not 0 <= arb <= 0x1FFFFFFF
            ):
                raise self.fail(
                    f'{where}raw_frames entries must be {{bus = "can0", arbitration_id = 0x123}} '
                    f"(id up to 0x1FFFFFFF), got {f!r}",
                    "raw_frames",
                )
            frames.append(RawFrame(bus, arb))
        return Condition(
            expression,
            trigger,
            interval,
            pre,
            post,
            tuple(frames),
            expression_line=line,
            expression_column=base + 1,
        )


# --------------------------------------------------------------------------- validation


def validate(campaigns: Sequence[Campaign], catalog: Catalog) -> None:
    """Check a campaign set against the catalog: every signal name known, names unique.

    Raises :class:`CampaignError` at the first problem (file, line and, for a
    name inside an expression, its column in the file).
    """
    known = catalog.by_name()
    seen: dict[str, Campaign] = {}
    for c in campaigns:
        src = c.source
        if c.name in seen:
            first = seen[c.name].source
            raise CampaignError(
                f"campaign {c.name!r} is defined twice (also at {first.path}:{first.line})",
                path=src.path,
                line=src.line,
            )
        seen[c.name] = c
        for s in c.signals:
            if s not in known:
                raise CampaignError(
                    f"campaign {c.name!r}: signal {s!r} is not in the catalog{_suggest(s, known)}",
                    path=src.path,
                    line=src.signals_line,
                )
        if isinstance(c.mode, Condition):
            for s, col in c.mode.expression.cost().signal_columns:
                if s not in known:
                    raise CampaignError(
                        f"campaign {c.name!r} condition expression: signal {s!r} is not in the catalog"
                        f"{_suggest(s, known)}",
                        path=src.path,
                        line=c.mode.expression_line or src.line,
                        column=c.mode.expression_column - 1 + col if c.mode.expression_column else None,
                    )


def _suggest(name: str, known: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
