"""``tcu dbc list|dump``: what a DBC file holds (messages, signals, units, choices, cycle times)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tcu.errors import InputError

__all__ = ["message_json", "register", "signal_json"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "dbc",
        help="list the messages of a DBC file, or dump its messages and signals",
        description="Show what a DBC file holds. 'list': one line per message; 'dump': every signal "
        "with its bit layout, scaling, range, unit and value choices.",
        epilog="Example: tcu dbc dump sim/data/tcu_sim.dbc ESP_Speed",
    )
    sub = parser.add_subparsers(dest="dbc_action", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="one line per message: id, name, length, cycle time, signals, sender")
    p.add_argument("dbc", type=Path, help="DBC file")
    p.add_argument("--json", action="store_true", help="JSON lines: one object per message (no signals)")
    p = sub.add_parser("dump", help="messages with all their signals")
    p.add_argument("dbc", type=Path, help="DBC file")
    p.add_argument("message", nargs="*", help="message names or ids (0x1A0 or 416); default: all")
    p.add_argument("--json", action="store_true", help="JSON lines: one object per message with its signals")
    parser.set_defaults(func=run)


def _id(msg: Any) -> str:
    return f"0x{msg.frame_id:08X}" if msg.is_extended_frame else f"0x{msg.frame_id:03X}"


def _number(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    number = float(value)
    return int(number) if number.is_integer() else number


def signal_json(sig: Any) -> dict[str, Any]:
    choices = sig.choices or {}
    return {
        "name": sig.name,
        "start": sig.start,
        "length": sig.length,
        "byte_order": sig.byte_order,
        "signed": bool(sig.is_signed),
        "float": bool(sig.is_float),
        "scale": _number(sig.scale),
        "offset": _number(sig.offset),
        "minimum": _number(sig.minimum),
        "maximum": _number(sig.maximum),
        "unit": sig.unit or "",
        "choices": {str(int(k)): str(v) for k, v in sorted(choices.items())},
        "multiplexer": bool(sig.is_multiplexer),
        "multiplexer_ids": list(sig.multiplexer_ids) if sig.multiplexer_ids else None,
        "receivers": list(sig.receivers),
        "comment": sig.comment or "",
    }


def message_json(msg: Any, *, signals: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": msg.name,
        "id": _id(msg),
        "frame_id": msg.frame_id,
        "extended": bool(msg.is_extended_frame),
        "fd": bool(msg.is_fd),
        "length": msg.length,
        "cycle_time_ms": msg.cycle_time,
        "senders": list(msg.senders),
        "signal_count": len(msg.signals),
        "comment": msg.comment or "",
    }
    if signals:
        out["signals"] = [signal_json(s) for s in msg.signals]
    return out


def _select(db: Any, wanted: list[str], path: Path) -> list[Any]:
    if not wanted:
        return sorted(db.messages, key=lambda m: m.frame_id)
    chosen = []
    names = {m.name: m for m in db.messages}
    for text in wanted:
        msg = names.get(text)
        if msg is None:
            try:
                msg = db.get_message_by_frame_id(int(text, 0))
            except (ValueError, KeyError):
                import difflib

                close = difflib.get_close_matches(text, sorted(names), n=3)
                hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
                raise InputError(f"{path}: no message {text!r}{hint}") from None
        chosen.append(msg)
    return chosen


def _signal_line(sig: Any) -> str:
    kind = "float" if sig.is_float else ("signed" if sig.is_signed else "unsigned")
    order = "LE" if sig.byte_order == "little_endian" else "BE"
    scaling = f" scale {_number(sig.scale)}" if sig.scale != 1 else ""
    scaling += f" offset {_number(sig.offset)}" if sig.offset != 0 else ""
    span = ""
    if sig.minimum is not None or sig.maximum is not None:
        span = f" [{_number(sig.minimum)}..{_number(sig.maximum)}]"
    mux = " (multiplexer)" if sig.is_multiplexer else ""
    if sig.multiplexer_ids:
        mux = f" (mux {','.join(str(i) for i in sig.multiplexer_ids)})"
    text = f"  {sig.name}: bit {sig.start} len {sig.length} {order} {kind}{scaling}{span}"
    text += f" {sig.unit}" if sig.unit else ""
    text += mux
    if sig.choices:
        text += "\n    choices: " + ", ".join(f"{int(k)}={v}" for k, v in sorted(sig.choices.items()))
    return text


def _message_line(msg: Any) -> str:
    cycle = f"{msg.cycle_time} ms" if msg.cycle_time else "-"
    senders = ",".join(msg.senders) or "-"
    return (
        f"{_id(msg):>10}  {msg.name:<28} {msg.length:>2} B{' FD' if msg.is_fd else ''}  cycle {cycle:>7}"
        f"  {len(msg.signals):>3} signals  from {senders}"
    )


def run(args: argparse.Namespace) -> int:
    from tcu.signals.dbc import load_dbc

    db = load_dbc(args.dbc)
    if args.dbc_action == "list":
        for msg in _select(db, [], args.dbc):
            print(json.dumps(message_json(msg, signals=False)) if args.json else _message_line(msg))
        if not args.json:
            count = sum(len(m.signals) for m in db.messages)
            print(f"{len(db.messages)} messages, {count} signals")
        return 0
    for msg in _select(db, args.message, args.dbc):
        if args.json:
            print(json.dumps(message_json(msg, signals=True)))
            continue
        print(_message_line(msg))
        if msg.comment:
            print(f"  -- {msg.comment}")
        for sig in msg.signals:
            print(_signal_line(sig))
    return 0
