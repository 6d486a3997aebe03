"""``tcu mapping list``: which DBC signals a VSS mapping file maps, and which it leaves out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tcu.errors import InputError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "mapping",
        help="list what a DBC-to-VSS mapping file maps (and which DBC signals it does not)",
        description="Resolve a mapping file against its DBC files, as the agent does at start, and list "
        "every VSS signal with its DBC source, unit and sampling period, then the DBC signals that no "
        "entry maps.",
        epilog="Example: tcu mapping list sim/data/tcu_sim_vss.toml --dbc sim/data/tcu_sim.dbc",
    )
    sub = parser.add_subparsers(dest="mapping_action", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="mapped and unmapped signals")
    p.add_argument("mapping", type=Path, help="mapping file (TOML)")
    p.add_argument(
        "--dbc",
        action="append",
        required=True,
        metavar="[BUS=]FILE",
        help="DBC file of bus BUS (default bus name: can0; repeatable)",
    )
    p.add_argument("--mapped", action="store_true", help="only the mapped signals")
    p.add_argument("--unmapped", action="store_true", help="only the DBC signals that are not mapped")
    p.add_argument("--json", action="store_true", help="JSON lines: one object per signal")
    parser.set_defaults(func=run)


def _databases(values: list[str]) -> dict[str, list[Any]]:
    from tcu.signals.dbc import load_dbc

    out: dict[str, list[Any]] = {}
    for value in values:
        bus, file_text = "can0", value
        if "=" in value and not Path(value).exists():
            bus, file_text = value.split("=", 1)
            if not bus or not file_text:
                raise InputError(f"--dbc {value!r}: want FILE or BUS=FILE")
        out.setdefault(bus, []).append(load_dbc(Path(file_text)))
    return out


def run(args: argparse.Namespace) -> int:
    from tcu.signals.mapping import build_catalog, load_mapping

    databases = _databases(args.dbc)
    catalog = build_catalog(load_mapping(args.mapping), databases, mapping_path=args.mapping)
    mapped = {(s.bus, s.message, s.signal): s for s in catalog.signals}
    rows: list[dict[str, Any]] = []
    if not args.unmapped:
        for s in catalog.signals:
            rows.append(
                {
                    "vss": s.name,
                    "bus": s.bus,
                    "message": s.message,
                    "signal": s.signal,
                    "unit": s.unit,
                    "period_ms": s.period_ms,
                    "type": s.value_type,
                }
            )
    unmapped: list[dict[str, Any]] = []
    for bus, dbs in databases.items():
        for db in dbs:
            for msg in sorted(db.messages, key=lambda m: m.frame_id):
                for sig in msg.signals:
                    if (bus, msg.name, sig.name) not in mapped:
                        unmapped.append(
                            {
                                "vss": None,
                                "bus": bus,
                                "message": msg.name,
                                "signal": sig.name,
                                "unit": sig.unit or "",
                                "cycle_time_ms": msg.cycle_time,
                            }
                        )
    if args.json:
        for row in rows + ([] if args.mapped else unmapped):
            print(json.dumps(row))
        return 0
    if not args.unmapped:
        print(f"mapped ({len(rows)}):")
        width = max((len(r["vss"]) for r in rows), default=0)
        for r in rows:
            unit = f" [{r['unit']}]" if r["unit"] else ""
            source = f"{r['bus']}/{r['message']}.{r['signal']}"
            print(f"  {r['vss']:<{width}}  <- {source}{unit}  every {r['period_ms']} ms")
    if not args.mapped:
        total = sum(len(m.signals) for dbs in databases.values() for db in dbs for m in db.messages)
        print(f"not mapped ({len(unmapped)} of {total} DBC signals):")
        for r in unmapped:
            unit = f" [{r['unit']}]" if r["unit"] else ""
            print(f"  {r['bus']}/{r['message']}.{r['signal']}{unit}")
    return 0
